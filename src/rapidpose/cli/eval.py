"""`rapidpose eval`: COCO keypoint AP/AR of a model on annotated images, the official top-down protocol."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("rapidpose")


def add_eval_parser(sub) -> None:
    from rapidpose.runtime import BACKENDS
    from rapidpose.runtime.torch_runtime import PRECISIONS

    p = sub.add_parser("eval", help="COCO keypoint AP/AR of a model on annotated images",
                       description="Top-down COCO keypoint evaluation as for ViTPose's published numbers: person "
                                   "boxes from the annotations or a detections file, rescoring, OKS-NMS, "
                                   "pycocotools. Writes the metrics and the scored COCO keypoint results.")
    p.add_argument("--annotations", required=True, metavar="FILE",
                   help="COCO keypoint annotations, e.g. person_keypoints_val2017.json")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder of the annotated images, e.g. val2017/")
    p.add_argument("--boxes", default="gt", metavar="gt|FILE",
                   help="person boxes: gt (the annotations', default) or a COCO detections file "
                        "(COCO_val2017_detections_AP_H_56_person.json for the published numbers)")
    p.add_argument("--min-box-score", type=float, default=0.0, help="drop detections scoring below this (default 0)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images of the annotation file only")
    p.add_argument("--model", default="vitpose-b", help="hub name or checkpoint (default vitpose-b)")
    p.add_argument("--flip", action="store_true", help="flip test, as the published numbers use")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default) is the exact reference; auto picks fp16 on GPUs, bf16 on CPUs that have it")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose++ expert: 0 COCO, 1 AIC, 2 MPII, ...")
    p.add_argument("--batch-size", type=int, default=64, help="crops per network batch")
    p.add_argument("--images-per-batch", type=int, default=16, help="images whose people share a network batch")
    p.add_argument("--json", default="rapidpose-eval.json", metavar="FILE",
                   help="metrics and settings (default rapidpose-eval.json)")
    p.add_argument("--predictions", metavar="FILE",
                   help="the scored COCO keypoint results (default <json stem>.keypoints.json beside --json)")


def run_eval(args) -> int:
    from rapidpose.evaluate.coco import evaluate, load_annotations, person_boxes, select_images
    from rapidpose.topdown.estimator import PoseEstimator

    # every input is checked before the model loads: a wrong path fails at once
    coco = load_annotations(args.annotations)
    images = select_images(coco, args.images, args.limit)
    boxes = person_boxes(coco, args.boxes, [im["id"] for im in images], args.min_box_score)
    est = PoseEstimator(args.model, detector=None, device=args.device, flip_test=args.flip,
                        batch_size=args.batch_size, dataset_index=args.dataset_index, backend=args.backend,
                        precision=args.precision)
    result = evaluate(est, coco, args.images, boxes=boxes, limit=args.limit, images_per_batch=args.images_per_batch)

    json_path = Path(args.json)
    predictions_path = Path(args.predictions) if args.predictions else json_path.with_name(
        f"{json_path.stem}.keypoints.json")
    for path in (json_path, predictions_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    predictions_path.write_text(json.dumps(result.predictions))
    runtime = est.runtime
    settings = {"model": str(args.model), "annotations": str(args.annotations), "images": str(args.images),
                "boxes": str(args.boxes), "min_box_score": args.min_box_score, "flip": args.flip,
                "limit": args.limit, "dataset_index": args.dataset_index,
                "backend": type(runtime).__name__, "device": str(getattr(runtime, "device", args.device)),
                "precision": str(getattr(runtime, "precision", args.precision))}
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
