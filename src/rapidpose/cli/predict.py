"""`rapidpose predict`: keypoints of the people in photos, folders and listings, written as each photo finishes.

Outputs are written image by image, in input order, as each batch of images (--images-per-batch)
finishes, so memory does not grow with the collection: --jsonl (one line per image, flushed), --json
(a document streamed: header, entries, then "images_done", "interrupted", "error"), --coco (a streamed
array), --draw. Ctrl-C closes every file (whole JSON, whole lines) and exits 130; an image that cannot
be read keeps its entry with an "error" and the run goes on (exit 1).

--resume continues the --jsonl file of an interrupted run: images with a good line there (matched by
their path as written in "image") are skipped; lines with an "error", repeated lines of an image and a
last line cut off mid-write are dropped, so those images are done again. The file then holds each
image once: the earlier run's lines first, as they were, then the images still to do in input order.
--json and --coco of a resumed run hold every image, in that same order.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from rapidpose.cli.options import COUNT, DEVICES_HELP, FRACTION, add_network_options
from rapidpose.cli.predict_ray import add_ray_options, asks_for_ray, run_on_ray
from rapidpose.errors import RapidPoseError
from rapidpose.io import coco_image_id
from rapidpose.progress import progress
from rapidpose.skeletons import SKELETONS

log = logging.getLogger("rapidpose")


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints of the people in images or folders of images",
                       description="Detect people, estimate their keypoints, write JSON / JSON Lines / COCO / "
                                   "drawn images, each image as soon as it is done, in input order. Without "
                                   "--json, --jsonl, --coco or --draw, a table of the people found in each image "
                                   "is printed instead. Ctrl-C closes the files (exit 130); an unreadable image "
                                   "is kept with an \"error\" and the run goes on (exit 1).")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files, folders of images (searched below) or globs ('photos/*.jpg')")
    p.add_argument("--list", action="append", metavar="FILE",
                   help="a listing file: one image path per line, read after the PATHs; blank lines and lines "
                        "starting with '#' are skipped, a relative path is relative to the listing file's "
                        "folder, each line is one file (no globs or folders); may be given more than once "
                        "(default: none)")
    add_network_options(p, device_help=DEVICES_HELP)
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
    p.add_argument("--images-per-batch", type=COUNT, metavar="N",
                   help="images read, detected and posed together, their people sharing network batches "
                        "(default 64 on a GPU, 16 on CPUs: a GPU wants large batches, a CPU an early first result)")
    p.add_argument("--decoder", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where JPEGs are decoded: auto or cpu (worker processes where the network runs on a "
                        "GPU, threads on CPUs), or gpu (nvImageCodec, extra gpu-decode: for hosts with few cores; "
                        "an error where it cannot be) (default auto)")
    p.add_argument("--json", metavar="FILE",
                   help="write all results to this JSON file, streamed: each image's entry as it finishes, the "
                        "document closed on every way out (default: none)")
    p.add_argument("--jsonl", metavar="FILE",
                   help="write one line per image (the entry --json has for it), in input order, flushed as "
                        "each image finishes (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="with --jsonl: continue the file of an interrupted run. Images it has a good line for "
                        "(same path string) are skipped; lines with an \"error\" and a last line cut off "
                        "mid-write are dropped and their images done again. The file ends with each image "
                        "once: the earlier lines first, as they were, then the rest in input order; --json "
                        "and --coco hold every image in that order (default: off)")
    p.add_argument("--coco", metavar="FILE",
                   help="write COCO keypoint results to this JSON file, streamed (default: none)")
    p.add_argument("--draw", metavar="DIR", help="write drawn images into this folder (default: none)")
    p.add_argument("--heatmaps", action="store_true",
                   help="with --draw, also write heatmap overlays (default: off)")
    add_ray_options(p)


def run_predict(args) -> int:
    from rapidpose.io import load_boxes
    from rapidpose.photos.devices import parse_devices
    from rapidpose.photos.records import PhotoRecords, scan_jsonl
    from rapidpose.photos.sources import gather

    _check_outputs(args)
    if asks_for_ray(args):  # the same photos and outputs, the work spread over a Ray cluster
        return run_on_ray(args)
    paths = gather(args.paths, args.list or ())  # before loading anything: a wrong path fails at once
    devices = parse_devices(args.device)
    box_table = load_boxes(args.boxes) if args.boxes else None
    if box_table is not None:
        _check_boxes_match(box_table, paths)
    earlier = scan_jsonl(args.jsonl) if args.resume else None  # a file that is not predict's: stop here
    todo = _still_to_do(paths, earlier)
    writing = bool(args.json or args.jsonl or args.coco)
    if not (writing or args.draw):
        log.info("no --json, --jsonl, --coco or --draw given: the keypoints are not written anywhere; a table of "
                 "the people found per image is printed at the end")
    if args.heatmaps and not args.draw:
        log.warning("--heatmaps draws heatmap overlays into the --draw folder: without --draw it does nothing")
    draw_dir = Path(args.draw) if args.draw else None
    if draw_dir:
        draw_dir.mkdir(parents=True, exist_ok=True)
    if len(devices) > 1:
        skeleton, results, stop = _on_devices(args, devices, todo, draw_dir)
    else:
        skeleton, results, stop = _on_one_device(args, todo, box_table, draw_dir)
    if not paths:
        stop()
        log.error("no images found in %s", " ".join(args.paths))
        return 1
    if earlier is not None:
        _check_same_keypoints(earlier, skeleton)
        earlier.tidy()

    header = {"model": str(args.model), **skeleton.to_dict()}  # the header keys of video --json
    records = PhotoRecords(header, args.json, args.jsonl, args.coco, append=earlier is not None)
    rows = None if writing or draw_dir else []  # the table printed without outputs: a short row per image
    done = failed = found = 0
    interrupted, error = False, None
    try:
        if earlier is not None and (args.json or args.coco):
            _carry_earlier(records, args.jsonl, paths, skeleton, coco=bool(args.coco))
        with progress(len(todo), "predict") as bar:
            for entry, coco, problem in results:  # in input order, each as soon as its batch is done
                if problem is not None:
                    log.error("%s", problem)
                    failed += 1
                found += len(entry["people"])
                records.add(entry, coco)
                if rows is not None:
                    rows.append(_row(entry))
                done += 1
                bar.update(1)
                if done % 16 == 0 or done == len(todo):
                    elapsed = bar.format_dict["elapsed"] or 1e-9
                    bar.set_postfix_str(f"{found} people, {found / elapsed:,.0f} people/s", refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted after %d of %d images: closing the outputs%s", done, len(todo),
                    f" (continue with --resume: {args.jsonl})" if args.jsonl else "")
    except BaseException as exc:
        error = f"{exc}" if isinstance(exc, RapidPoseError) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        stop()  # the reading, detecting and workers stop
        records.close({"images_done": records.images, "interrupted": interrupted, "error": error})

    if rows is not None and not interrupted:
        print(_table(rows))
    log.info("%d of %d images processed, %d people%s", done - failed, len(todo), found,
             f"; {failed} failed (see messages above)" if failed else "")
    if interrupted:
        return 130
    return 1 if failed else 0


def _on_one_device(args, todo, box_table, draw_dir):
    """(keypoint set, (entry, COCO results, error) per photo in order, stop): the photo pipeline here."""
    from rapidpose.draw.cpu import save_drawn
    from rapidpose.photos.pipeline import predict_photos
    from rapidpose.photos.records import photo_record
    from rapidpose.topdown.estimator import PoseEstimator

    detector = "none" if box_table is not None else args.detector
    est = PoseEstimator(args.model, detector=detector, device=args.device, flip_test=args.flip,
                        detector_threshold=args.threshold, batch_size=args.batch_size,
                        dataset_index=args.dataset_index, backend=args.backend, precision=args.precision,
                        compile=args.compile, keypoint_set=args.keypoint_set)
    given = None if box_table is None else functools.partial(_given_boxes, box_table, todo, args.threshold)
    per_batch = args.images_per_batch or (64 if est.on_gpu else 16)
    results = predict_photos(est, [path for _, path in todo], given, images_per_batch=per_batch,
                             return_heatmaps=args.heatmaps, decoder=args.decoder)

    def entries():
        for result in results:
            path, index = result.path, todo[result.index][0]
            if result.error is not None:
                yield photo_record(path, error=result.error), (), result.error
                continue
            if draw_dir:  # before its line: a line on disk means the image is wholly done
                save_drawn(result.numpy_image(), result.poses, draw_dir / path.stem, args.keypoint_threshold,
                           args.heatmaps, est.input_size)
            coco = result.poses.to_coco(coco_image_id(path, index)) if args.coco else ()
            yield photo_record(path, result.size, result.poses), coco, None

    return est.skeleton, entries(), results.close


def _on_devices(args, devices, todo, draw_dir):
    """The same from a worker process per device (photos.devices): `--device cuda` with several GPUs,
    or a list such as cuda:0,2."""
    from rapidpose.photos.devices import DeviceWorkers, WorkerSettings
    from rapidpose.photos.records import photo_record

    settings = WorkerSettings(
        model=str(args.model), detector=args.detector, flip_test=args.flip, detector_threshold=args.threshold,
        batch_size=args.batch_size, dataset_index=args.dataset_index, backend=args.backend,
        precision=args.precision, compile=args.compile, keypoint_set=args.keypoint_set,
        images_per_batch=args.images_per_batch, decoder=args.decoder, coco=bool(args.coco), boxes=args.boxes,
        box_threshold=args.threshold, draw_dir=str(draw_dir) if draw_dir else None,
        keypoint_threshold=args.keypoint_threshold, heatmaps=args.heatmaps)
    log.info("predicting on %d devices (%s): a worker process each", len(devices), ", ".join(devices))
    workers = DeviceWorkers(devices, settings)

    def entries():
        for _, path, entry, coco, _, problem in workers.run(todo):
            yield entry if entry is not None else photo_record(path, error=problem), coco, problem

    return workers.skeleton, entries(), workers.close


def _check_outputs(args) -> None:
    """--resume needs --jsonl; no two outputs may be one file (each would overwrite the other)."""
    from rapidpose.errors import InputError

    if args.resume and not args.jsonl:
        raise InputError("--resume continues the --jsonl file of an interrupted run: give --jsonl FILE too")
    named = [(option, Path(value).resolve()) for option, value in
             (("--json", args.json), ("--jsonl", args.jsonl), ("--coco", args.coco)) if value]
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1:]:
            if a == b:
                raise InputError(f"{first} and {second} name the same file '{a}': give each output its own file")


def _still_to_do(paths, earlier) -> list[tuple[int, Path]]:
    """(position among the inputs, path) of the images to process: all of them, or under --resume those
    without a good line in the JSON Lines file (each image once: matched by its path as written)."""
    if earlier is None:
        return list(enumerate(paths))
    seen, todo = set(earlier.done), []
    for index, path in enumerate(paths):
        if str(path) not in seen:
            seen.add(str(path))
            todo.append((index, path))
    log.info("resuming '%s': %d of the %d images are done, %d to go%s", earlier.path, len(paths) - len(todo),
             len(paths), len(todo), _dropped(earlier))
    return todo


def _dropped(earlier) -> str:
    said = [f"{n} line{'s' if n > 1 else ''} {what}" for n, what in (
        (earlier.errors, "with an error (tried again)"), (earlier.repeats, "repeating an image"),
        (earlier.blanks, "left blank")) if n]
    if earlier.unfinished:
        said.append("the last line, cut off (done again)")
    return f"; dropped from the file: {', '.join(said)}" if said else ""


def _check_same_keypoints(earlier, skeleton) -> None:
    from rapidpose.errors import InputError

    if earlier.keypoints is not None and earlier.keypoints != skeleton.num_keypoints:
        raise InputError(f"the people in '{earlier.path}' have {earlier.keypoints} keypoints, this model's "
                         f"{skeleton.num_keypoints} ({skeleton.name}): resume with the model of the earlier run, "
                         f"or write to a new --jsonl file")


def _carry_earlier(records, jsonl, paths, skeleton, coco: bool) -> None:
    """Under --resume, the --json document and the --coco results hold the images of the earlier run
    too (first, as the JSON Lines file has them). Their COCO results are made from their lines."""
    from rapidpose.photos.records import poses_from_record, read_jsonl

    position = {str(p): i for i, p in enumerate(paths)} if coco else {}
    extra = len(paths)  # an image no longer among the inputs: a position after them
    for entry in read_jsonl(jsonl):
        results = ()
        if coco:
            index = position.get(entry["image"])
            if index is None:
                index, extra = extra, extra + 1
            results = poses_from_record(entry, skeleton).to_coco(coco_image_id(entry["image"], index))
        records.add(entry, results, earlier=True)


def _row(entry) -> tuple[str, str, str]:
    if "error" in entry:
        return entry["image"], "unreadable", "-"
    return entry["image"], f"{entry['width']}x{entry['height']}", str(len(entry["people"]))


def _table(rows) -> str:
    """One line per image: its path, size and how many people were found (a plain, aligned table)."""
    rows = [("image", "size", "people"), *rows]
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


def _given_boxes(box_table, todo, threshold, position, path):
    """The --boxes entry of the photo at `position` among those to do, above the threshold."""
    from rapidpose.io import boxes_for

    given = boxes_for(box_table, path, coco_image_id(path, todo[position][0]))
    return given[given[:, 4] >= threshold]
