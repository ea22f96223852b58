"""`rapidpose eval`: COCO keypoint AP/AR of a model on annotated images, the official top-down protocol."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("rapidpose")


def add_eval_parser(sub) -> None:
    from rapidpose.cli.options import COUNT, DEVICES_HELP, FRACTION, add_network_options

    p = sub.add_parser("eval", help="COCO keypoint AP/AR of a model on annotated images",
                       description="Top-down COCO keypoint evaluation as for ViTPose's published numbers: person "
                                   "boxes from the annotations or a detections file, rescoring, OKS-NMS, "
                                   "pycocotools. Writes the metrics and the scored COCO keypoint results.")
    p.add_argument("--annotations", required=True, metavar="FILE",
                   help="COCO keypoint annotations, e.g. person_keypoints_val2017.json (required)")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="the folder of the annotated images, e.g. val2017/ (required)")
    p.add_argument("--boxes", default="gt", metavar="gt|FILE",
                   help="person boxes: gt (the annotations') or a COCO detections file "
                        "(COCO_val2017_detections_AP_H_56_person.json for the published numbers) (default gt)")
    p.add_argument("--min-box-score", type=FRACTION, default=0.0, metavar="SCORE",
                   help="drop detections scoring below this, 0 to 1 (default 0)")
    p.add_argument("--limit", type=COUNT, metavar="N",
                   help="evaluate the first N images of the annotation file only, 1 or more (default: all)")
    add_network_options(p, model_help="hub name or checkpoint", precision="fp32", compile=False,
                        device_help=DEVICES_HELP)
    p.add_argument("--batch-size", type=COUNT, default=64, metavar="N", help="crops per network batch (default 64)")
    p.add_argument("--images-per-batch", type=COUNT, default=16, metavar="N",
                   help="images whose people share a network batch (default 16)")
    p.add_argument("--json", default="rapidpose-eval.json", metavar="FILE",
                   help="metrics and settings (default rapidpose-eval.json)")
    p.add_argument("--predictions", metavar="FILE",
                   help="the scored COCO keypoint results (default <json stem>.keypoints.json beside --json)")


def run_eval(args) -> int:
    from rapidpose.evaluate.coco import evaluate, load_annotations, person_boxes, select_images
    from rapidpose.photos.devices import parse_devices

    # every input is checked before the model loads: a wrong path fails at once
    coco = load_annotations(args.annotations)
    images = select_images(coco, args.images, args.limit)
    boxes = person_boxes(coco, args.boxes, [im["id"] for im in images], args.min_box_score)
    devices = parse_devices(args.device)
    if len(devices) > 1:  # --device cuda on a host of several GPUs, or a list: a worker process each
        from rapidpose.evaluate.coco import evaluate_on_devices
        from rapidpose.photos.devices import WorkerSettings

        log.info("evaluating on %d devices (%s): a worker process each", len(devices), ", ".join(devices))
        settings = WorkerSettings(model=str(args.model), flip_test=args.flip, batch_size=args.batch_size,
                                  dataset_index=args.dataset_index, backend=args.backend, precision=args.precision,
                                  images_per_batch=args.images_per_batch)
        result = evaluate_on_devices(settings, devices, coco, args.images, boxes=boxes, limit=args.limit)
        runtime = {"backend": args.backend, "device": ",".join(devices), "precision": args.precision}
    else:
        from rapidpose.topdown.estimator import PoseEstimator

        est = PoseEstimator(args.model, detector=None, device=devices[0], flip_test=args.flip,
                            batch_size=args.batch_size, dataset_index=args.dataset_index, backend=args.backend,
                            precision=args.precision)
        result = evaluate(est, coco, args.images, boxes=boxes, limit=args.limit,
                          images_per_batch=args.images_per_batch)
        runtime = {"backend": type(est.runtime).__name__, "device": str(getattr(est.runtime, "device", devices[0])),
                   "precision": str(getattr(est.runtime, "precision", args.precision))}

    json_path = Path(args.json)
    predictions_path = Path(args.predictions) if args.predictions else json_path.with_name(
        f"{json_path.stem}.keypoints.json")
    for path in (json_path, predictions_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    predictions_path.write_text(json.dumps(result.predictions))
    settings = {"model": str(args.model), "annotations": str(args.annotations), "images": str(args.images),
                "boxes": str(args.boxes), "min_box_score": args.min_box_score, "flip": args.flip,
                "limit": args.limit, "dataset_index": args.dataset_index, **runtime}
    json_path.write_text(json.dumps({
        "metrics": result.metrics, "images": result.images, "people": result.people,
        "skipped_images": result.skipped, "seconds": round(result.seconds, 3),
        "people_per_s": round(result.people_per_s, 2), "settings": settings,
        "predictions": str(predictions_path)}, indent=2))
    print(_table(result))
    log.info("wrote %s and %s", json_path, predictions_path)
    return 1 if result.skipped else 0


def _table(result) -> str:
    names = ("AP", "AP50", "AP75", "APM", "APL", "AR")
    skipped = f", {len(result.skipped)} unreadable" if result.skipped else ""
    values = (f"{result.metrics[n]:.3f}" if result.metrics[n] >= 0 else "n/a" for n in names)
    return (f"{result.images} images{skipped}, {result.people} people, {result.seconds:.1f} s "
            f"({result.people_per_s:.1f} people/s)\n"
            + "  ".join(f"{n:>6}" for n in names) + "\n" + "  ".join(f"{v:>6}" for v in values))
