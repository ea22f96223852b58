"""The `rapidpose` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from .errors import RapidPoseError

log = logging.getLogger("rapidpose")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints of the people in images or folders of images",
                       description="Detect people, estimate their keypoints, write JSON / COCO / drawn images.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--model", default="vitpose-b", help="hub name (vitpose-b, vitpose-plus-b, ...) or checkpoint path")
    p.add_argument("--detector", default="rtmdet-nano",
                   help="rtmdet-nano, yolox-nano, an .onnx path, or 'none' (whole image, or --boxes)")
    p.add_argument("--boxes", help="person boxes: rapidpose JSON, COCO detections or COCO annotations")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum person box score (default 0.3)")
    p.add_argument("--keypoint-threshold", type=float, default=0.3, help="minimum keypoint score to draw")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose++ expert: 0 COCO, 1 AIC, 2 MPII, ...")
    p.add_argument("--batch-size", type=int, default=64, help="crops per network batch")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--coco", help="write COCO keypoint results to this JSON file")
    p.add_argument("--draw", help="write drawn images into this folder")
    p.add_argument("--heatmaps", action="store_true", help="with --draw, also write heatmap overlays")


def _progress(items, desc):
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def run_predict(args) -> int:
    from . import draw
    from .geometry import boxes_to_center_scale
    from .io import boxes_for, coco_image_id, expand_paths, load_boxes, read_image
    from .pipeline import PoseEstimator

    box_table = load_boxes(args.boxes) if args.boxes else None
    detector = "none" if box_table is not None else args.detector
    est = PoseEstimator(args.model, detector=detector, device=args.device, flip_test=args.flip,
                        detector_threshold=args.threshold, batch_size=args.batch_size,
                        dataset_index=args.dataset_index)
    paths = expand_paths(args.paths)
    if not paths:
        log.error("no images found in %s", " ".join(args.paths))
        return 1
    draw_dir = Path(args.draw) if args.draw else None
    if draw_dir:
        draw_dir.mkdir(parents=True, exist_ok=True)

    entries, coco, failed = [], [], 0
    for index, path in enumerate(_progress(paths, "predict")):
        entry = {"image": str(path)}
        try:
            image = read_image(path)
            image_id = coco_image_id(path, index)
            boxes = None
            if box_table is not None:
                given = boxes_for(box_table, path, image_id)
                boxes = given[given[:, 4] >= args.threshold]
            poses = est.predict([image], None if boxes is None else [boxes], return_heatmaps=args.heatmaps)[0]
        except RapidPoseError as exc:
            log.error("%s", exc)
            failed += 1
            entries.append({**entry, "error": str(exc), "people": []})
            continue
        h, w = image.shape[:2]
        entries.append({**entry, "width": w, "height": h, "people": poses.to_list()})
        coco.extend(poses.to_coco(image_id))
        if draw_dir:
            drawn = draw.draw_poses(image, poses, keypoint_threshold=args.keypoint_threshold)
            cv2.imwrite(str(draw_dir / f"{path.stem}.jpg"), drawn[:, :, ::-1])
            if args.heatmaps and len(poses):
                overlay = draw.draw_heatmaps(image, poses.heatmaps, *boxes_to_center_scale(poses.boxes, est.input_size))
                cv2.imwrite(str(draw_dir / f"{path.stem}_heatmaps.jpg"), overlay[:, :, ::-1])

    if args.json:
        doc = {"model": str(args.model), **est.skeleton.to_dict(), "images": entries}
        doc["keypoint_names"] = doc.pop("keypoints")
        Path(args.json).write_text(json.dumps(doc))
    if args.coco:
        Path(args.coco).write_text(json.dumps(coco))
    people = sum(len(e["people"]) for e in entries)
    print(f"{len(paths) - failed} of {len(paths)} images processed, {people} people"
          + (f"; {failed} failed (see messages above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rapidpose", description="Fast, exact ViTPose pose estimation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _predict_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return {"predict": run_predict}[args.command](args)
    except RapidPoseError as exc:  # a whole-run problem (model, detector, boxes file): one clear line
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
