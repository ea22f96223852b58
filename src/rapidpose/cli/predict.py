"""The `rapidpose` command."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2

from rapidpose.errors import RapidPoseError
from rapidpose.io import coco_image_id, read_ahead
from rapidpose.progress import progress
from rapidpose.skeletons import SKELETONS

log = logging.getLogger("rapidpose")


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints of the people in images or folders of images",
                       description="Detect people, estimate their keypoints, write JSON / COCO / drawn images.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--model", default="vitpose-b", help="hub name (vitpose-b, vitpose-plus-b, ...) or checkpoint path")
    p.add_argument("--detector", default="rtmdet-nano",
                   help="rtmdet-nano, yolox-nano, an .onnx path, or 'none' (whole image, or --boxes)")
    p.add_argument("--boxes", help="person boxes: rapidpose JSON, COCO detections or COCO annotations")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (GPU when there is one)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"],
                   help="inference backend (auto: the fastest for the device); .onnx/.xml models pick their own")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on GPU, bf16 on CPUs that have it, else fp32 (fp32 is the exact reference)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, faster run)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum person box score (default 0.3)")
    p.add_argument("--keypoint-threshold", type=float, default=0.3, help="minimum keypoint score to draw")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose++ expert: 0 COCO, 1 AIC, 2 MPII, ...")
    p.add_argument("--keypoint-set", choices=sorted(SKELETONS),
                   help="keypoint set of an .onnx/.xml model without rapidpose metadata (17 keypoints: "
                        "coco or ap10k); files from `rapidpose export` name their own")
    p.add_argument("--batch-size", type=int, default=64, help="crops per network batch")
    p.add_argument("--images-per-batch", type=int, default=16, help="images whose people share a network batch")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--coco", help="write COCO keypoint results to this JSON file")
    p.add_argument("--draw", help="write drawn images into this folder")
    p.add_argument("--heatmaps", action="store_true", help="with --draw, also write heatmap overlays")


def run_predict(args) -> int:
    from rapidpose.io import chunked, expand_paths, load_boxes
    from rapidpose.topdown.estimator import PoseEstimator

    paths = expand_paths(args.paths)  # before loading anything: a wrong path fails at once
    box_table = load_boxes(args.boxes) if args.boxes else None
    if box_table is not None:
        _check_boxes_match(box_table, paths)
    detector = "none" if box_table is not None else args.detector
    est = PoseEstimator(args.model, detector=detector, device=args.device, flip_test=args.flip,
                        detector_threshold=args.threshold, batch_size=args.batch_size,
                        dataset_index=args.dataset_index, backend=args.backend, precision=args.precision,
                        compile=args.compile, keypoint_set=args.keypoint_set)
    if not paths:
        log.error("no images found in %s", " ".join(args.paths))
        return 1
    draw_dir = Path(args.draw) if args.draw else None
    if draw_dir:
        draw_dir.mkdir(parents=True, exist_ok=True)

    entries, coco, failed, found = [], [], 0, 0
    with progress(len(paths), "predict") as bar:
        for chunk in chunked(enumerate(read_ahead(paths)), max(args.images_per_batch, 1)):
            good = []
            for index, (path, image) in chunk:
                if isinstance(image, RapidPoseError):
                    log.error("%s", image)
                    failed += 1
                    entries.append((index, {"image": str(path), "error": str(image), "people": []}))
                else:
                    good.append((index, path, image))
            results = _predict_chunk(est, good, box_table, args)
            for (index, path, image), poses in zip(good, results):
                h, w = image.shape[:2]
                entries.append((index, {"image": str(path), "width": w, "height": h, "people": poses.to_list()}))
                coco.extend(poses.to_coco(coco_image_id(path, index)))
                found += len(poses)
                if draw_dir:
                    _draw(image, poses, draw_dir / path.stem, args, est.input_size)
            bar.update(len(chunk))
            bar.set_postfix(people=found)

    entries = [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]
    if args.json:
        doc = {"model": str(args.model), **est.skeleton.to_dict(), "images": entries}
        doc["keypoint_names"] = doc.pop("keypoints")
        Path(args.json).write_text(json.dumps(doc))
    if args.coco:
        Path(args.coco).write_text(json.dumps(coco))
    print(f"{len(paths) - failed} of {len(paths)} images processed, {found} people"
          + (f"; {failed} failed (see messages above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _check_boxes_match(box_table, paths) -> None:
    """Say which boxes entries and which images found no partner; none at all is an error."""
    from rapidpose.io import MATCHING, match_boxes, name_a_few

    lonely_images, lonely_entries = match_boxes(box_table, paths)
    if lonely_entries:
        log.warning("%d of the %d entries of boxes file '%s' match no input image: %s (%s)",
                    len(lonely_entries), len(box_table.entries), box_table.source, name_a_few(lonely_entries),
                    MATCHING)
    if lonely_images:
        log.warning("%d of the %d input images have no entry in boxes file '%s', so nobody is looked for "
                    "in them: %s", len(lonely_images), len(paths), box_table.source,
                    name_a_few([str(p) for p in lonely_images]))


def _predict_chunk(est, good, box_table, args):
    from rapidpose.io import boxes_for

    if not good:
        return []
    boxes = None
    if box_table is not None:
        boxes = []
        for index, path, _ in good:
            given = boxes_for(box_table, path, coco_image_id(path, index))
            boxes.append(given[given[:, 4] >= args.threshold])
    return est.predict([image for _, _, image in good], boxes, return_heatmaps=args.heatmaps)


def _draw(image, poses, stem: Path, args, input_size) -> None:
    from rapidpose.draw import cpu as draw
    from rapidpose.topdown.geometry import boxes_to_center_scale

    drawn = draw.draw_poses(image, poses, keypoint_threshold=args.keypoint_threshold)
    cv2.imwrite(f"{stem}.jpg", drawn[:, :, ::-1])
    if args.heatmaps and len(poses):
        overlay = draw.draw_heatmaps(image, poses.heatmaps, *boxes_to_center_scale(poses.boxes, input_size))
        cv2.imwrite(f"{stem}_heatmaps.jpg", overlay[:, :, ::-1])


