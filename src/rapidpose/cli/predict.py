"""`rapidpose predict`: keypoints of the people in photos and folders, written as JSON, COCO results or drawings."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2

from rapidpose.cli.options import COUNT, FRACTION, add_network_options
from rapidpose.errors import RapidPoseError
from rapidpose.io import coco_image_id, read_ahead
from rapidpose.progress import progress
from rapidpose.skeletons import SKELETONS

log = logging.getLogger("rapidpose")


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints of the people in images or folders of images",
                       description="Detect people, estimate their keypoints, write JSON / COCO / drawn images. "
                                   "Without --json, --coco or --draw, a table of the people found in each image "
                                   "is printed instead.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    add_network_options(p)
    p.add_argument("--detector", default="rtmdet-nano",
                   help="rtmdet-nano, yolox-nano, an .onnx path, or 'none' (whole image, or --boxes) "
                        "(default rtmdet-nano)")
    p.add_argument("--boxes", metavar="FILE",
                   help="person boxes: rapidpose JSON, COCO detections or COCO annotations, in place of the "
                        "detector (default: none)")
    p.add_argument("--threshold", type=FRACTION, default=0.3, metavar="SCORE",
                   help="minimum person box score, the detector's or --boxes', 0 to 1 (default 0.3)")
    p.add_argument("--keypoint-threshold", type=FRACTION, default=0.3, metavar="SCORE",
                   help="minimum keypoint score to draw, 0 to 1 (default 0.3)")
    p.add_argument("--keypoint-set", choices=sorted(SKELETONS),
                   help="keypoint set of an .onnx/.xml model without rapidpose metadata (17 keypoints: "
                        "coco or ap10k); files from `rapidpose export` name their own (default: the model's)")
    p.add_argument("--batch-size", type=COUNT, default=64, metavar="N", help="crops per network batch (default 64)")
    p.add_argument("--images-per-batch", type=COUNT, default=16, metavar="N",
                   help="images whose people share a network batch (default 16)")
    p.add_argument("--json", metavar="FILE", help="write all results to this JSON file (default: none)")
    p.add_argument("--coco", metavar="FILE", help="write COCO keypoint results to this JSON file (default: none)")
    p.add_argument("--draw", metavar="DIR", help="write drawn images into this folder (default: none)")
    p.add_argument("--heatmaps", action="store_true",
                   help="with --draw, also write heatmap overlays (default: off)")


def run_predict(args) -> int:
    from rapidpose.io import chunked, expand_paths, load_boxes
    from rapidpose.topdown.estimator import PoseEstimator

    paths = expand_paths(args.paths)  # before loading anything: a wrong path fails at once
    box_table = load_boxes(args.boxes) if args.boxes else None
    if box_table is not None:
        _check_boxes_match(box_table, paths)
    if not (args.json or args.coco or args.draw):
        log.info("no --json, --coco or --draw given: the keypoints are not written anywhere; a table of the "
                 "people found per image is printed at the end")
    if args.heatmaps and not args.draw:
        log.warning("--heatmaps draws heatmap overlays into the --draw folder: without --draw it does nothing")
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
        doc = {"model": str(args.model), **est.skeleton.to_dict(), "images": entries}  # the header keys of video --json
        Path(args.json).write_text(json.dumps(doc))
    if args.coco:
        Path(args.coco).write_text(json.dumps(coco))
    if not (args.json or args.coco or args.draw):
        print(_table(entries))
    log.info("%d of %d images processed, %d people%s", len(paths) - failed, len(paths), found,
             f"; {failed} failed (see messages above)" if failed else "")
    return 1 if failed else 0


def _table(entries) -> str:
    """One line per image: its path, size and how many people were found (a plain, aligned table)."""
    rows = [("image", "size", "people")]
    for entry in entries:
        if "error" in entry:
            rows.append((entry["image"], "unreadable", "-"))
        else:
            rows.append((entry["image"], f"{entry['width']}x{entry['height']}", str(len(entry["people"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{image:<{widths[0]}}  {size:<{widths[1]}}  {people:>6}" for image, size, people in rows)


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
    return est.predict([image for _, _, image in good], boxes, return_heatmaps=args.heatmaps,
                       names=[str(path) for _, path, _ in good])


def _draw(image, poses, stem: Path, args, input_size) -> None:
    from rapidpose.draw import cpu as draw
    from rapidpose.topdown.geometry import boxes_to_center_scale

    drawn = draw.draw_poses(image, poses, keypoint_threshold=args.keypoint_threshold)
    cv2.imwrite(f"{stem}.jpg", drawn[:, :, ::-1])
    if args.heatmaps and len(poses):
        overlay = draw.draw_heatmaps(image, poses.heatmaps, *boxes_to_center_scale(poses.boxes, input_size))
        cv2.imwrite(f"{stem}_heatmaps.jpg", overlay[:, :, ::-1])


