"""`rapidpose video`: tracked poses of a video, folder of frames, webcam or stream -> mp4, JSON, JSONL."""
from __future__ import annotations

import logging

from rapidpose.video.process import open_window, process_video

log = logging.getLogger("rapidpose")


def add_video_parser(sub) -> None:
    from rapidpose.cli.options import COUNT, FRACTION, INDEX, add_network_options, number
    from rapidpose.video.pipeline import DECODERS, TRACKERS
    from rapidpose.video.tracking import tracker_defaults
    from rapidpose.video.writer import PRESETS

    track = tracker_defaults()
    p = sub.add_parser("video", help="track people and their keypoints through a video, camera or stream",
                       description="Tracked poses frame by frame. INPUT: a video file, a folder or glob of "
                                   "frames ('frames/*.jpg'), a webcam index (0) or a stream URL (rtsp://, "
                                   "http://). The mp4 keeps the input's frame rate and size; audio is dropped.")
    p.add_argument("input", metavar="INPUT",
                   help="video file, folder or glob of frames, webcam index or stream URL (rtsp://, http://)")
    add_network_options(p, model_help="hub name or checkpoint")
    p.add_argument("--detector", default="rtmdet-nano",
                   help="rtmdet-nano, yolox-nano, an .onnx path, or none: the whole frame is the person "
                        "(default rtmdet-nano)")
    p.add_argument("--threshold", type=FRACTION, default=0.3, metavar="SCORE",
                   help="person box score threshold; with a tracker, a box below it is kept only when it has a "
                        "track id (default 0.3)")
    p.add_argument("--track", default="bytetrack", choices=TRACKERS,
                   help="bytetrack (two-stage: low-score boxes keep their tracks), sort (one stage) or none "
                        "(default bytetrack)")
    p.add_argument("--track-high", type=FRACTION, default=track["high_threshold"], metavar="SCORE",
                   help="boxes from this score on are matched to the tracks first and may start new ones "
                        "(default %(default)s)")
    p.add_argument("--track-low", type=FRACTION, default=track["low_threshold"], metavar="SCORE",
                   help="bytetrack's second stage: boxes from this score up to --track-high continue the "
                        "tracks the first left unmatched (IoU at least 0.5) and start none (default %(default)s)")
    p.add_argument("--new-track", type=FRACTION, default=track["new_track_threshold"], metavar="SCORE",
                   help="an unmatched box needs this score (and --track-high) to start a track "
                        "(default %(default)s)")
    p.add_argument("--min-hits", type=COUNT, default=track["min_hits"], metavar="N",
                   help="a new track gets its id once matched in N frames in a row, so a one-frame false "
                        "detection costs no id; on the first frame at once (default %(default)s)")
    p.add_argument("--track-buffer", type=INDEX, default=track["max_age"], metavar="FRAMES",
                   help="frames a lost track waits to be found again before it ends (default %(default)s)")
    p.add_argument("--oks-weight", type=FRACTION, default=0.0, metavar="W",
                   help="share of keypoint similarity (OKS) in track association, 0..1 (default 0: boxes only)")
    p.add_argument("--detect-every", type=COUNT, default=1, metavar="N",
                   help="run the detector on every Nth frame; the tracker carries the boxes between (default 1)")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of keypoints per track (default off)")
    p.add_argument("--rotate", type=int, default=0, choices=[0, 90, 180, 270],
                   help="turn the frames by this many degrees clockwise, on top of a file's own display "
                        "rotation (default 0)")
    p.add_argument("--fps", type=number(float, 0.1), default=None, metavar="F", help="frame rate of image sequences (default 30)")
    p.add_argument("--out", metavar="VIDEO",
                   help="write an H.264 mp4 with skeletons, boxes and track ids (default: none)")
    p.add_argument("--crf", type=number(int, 0, 51), default=23, help="x264 quality, 18 (best) .. 28 (smallest) (default 23)")
    p.add_argument("--preset", default="veryfast", choices=PRESETS,
                   help="x264 speed preset; ultrafast is the fastest, with larger files (default veryfast)")
    p.add_argument("--json", metavar="FILE", help="one JSON document with every frame (default: none)")
    p.add_argument("--jsonl", metavar="FILE",
                   help="JSON Lines, one frame per line, written as frames finish (default: none)")
    p.add_argument("--show", action="store_true", help="show the drawn frames in a window, q quits (default off)")
    p.add_argument("--decoder", default="auto", choices=DECODERS,
                   help="video decoding: nvdec on the GPU (pip install 'rapidpose[nvdec]'), ffmpeg on the CPU, or "
                        "auto: nvdec when the frames go to a CUDA GPU and it can decode the file (default auto)")
    p.add_argument("--frames-per-batch", type=COUNT, default=None, metavar="B",
                   help="frames whose people share a network batch (default on GPUs 32 up to 1080p, fewer for "
                        "larger frames; 4 on CPUs; 1 live)")


def _tracker_options(args) -> dict | None:
    """The tracker settings for track_frames: all of them with a tracker; with --track none, none, and
    an error if one was changed (it would be dropped silently)."""
    from rapidpose.errors import InputError
    from rapidpose.video.tracking import tracker_defaults

    given = {"high_threshold": args.track_high, "low_threshold": args.track_low,
             "new_track_threshold": args.new_track, "min_hits": args.min_hits, "max_age": args.track_buffer}
    if args.track != "none":
        return given
    defaults = tracker_defaults()
    changed = [flag for flag, (name, value) in zip(
        ("--track-high", "--track-low", "--new-track", "--min-hits", "--track-buffer"), given.items())
        if value != defaults[name]]
    if changed:
        raise InputError(f"{', '.join(changed)} set the tracker, but --track none tracks nobody: "
                         "use --track bytetrack or sort, or leave them out")
    return None


def run_video(args) -> int:
    from rapidpose.topdown.estimator import PoseEstimator
    from rapidpose.video.sources import open_source

    tracker_options = _tracker_options(args)  # before anything is opened or loaded
    if not (args.out or args.json or args.jsonl or args.show):
        log.warning("no output asked for (--out, --json, --jsonl or --show): poses are computed and dropped")
    window = open_window() if args.show else None
    source = open_source(args.input, rotate=args.rotate, fps=args.fps)  # a bad input fails before the model loads
    if args.out:
        from rapidpose.video.drawing_process import start_worker

        start_worker()  # the mp4's worker process gets ready while the model loads
    est = PoseEstimator(args.model, detector=args.detector, device=args.device, flip_test=args.flip,
                        detector_threshold=args.threshold, dataset_index=args.dataset_index,
                        backend=args.backend, precision=args.precision, compile=args.compile)
    stats = process_video(est, source, out=args.out, json_path=args.json, jsonl_path=args.jsonl, window=window,
                          tracker=args.track, detect_every=args.detect_every, smooth=args.smooth,
                          frames_per_batch=args.frames_per_batch, oks_weight=args.oks_weight, crf=args.crf,
                          preset=args.preset, header={"model": str(args.model)}, decoder=args.decoder,
                          tracker_options=tracker_options)
    log.info("%d frames, %d people in %.1f s (%.1f frames/s)%s", stats["frames"], stats["people"], stats["seconds"],
             stats["frames_per_s"], f"; wrote {args.out}" if args.out else "")
    if source.error:
        log.error("%s: %s; the outputs hold the %d frames before it", args.input, source.error, stats["frames"])
    if stats["interrupted"]:
        return 130
    return 1 if (source.error or stats["bad_frames"]) else 0
