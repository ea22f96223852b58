"""`rapidpose video`: tracked poses of videos, folders of frames, a webcam or a stream -> mp4, JSON, JSONL.

One input is done here, as it always was; several (files, folders or lists of videos) go to
video.files: one after another on one device, or shared out over a worker process per device
(--device cuda on a host with several GPUs, cuda:0,2, cpu,cpu), or over a Ray cluster (--ray: cli.video_ray)."""
from __future__ import annotations

import logging

from rapidpose.errors import InputError
from rapidpose.video.process import open_window, process_video

log = logging.getLogger("rapidpose")


def add_video_parser(sub) -> None:
    from rapidpose.cli.options import COUNT, FRACTION, INDEX, add_network_options, number
    from rapidpose.cli.video_ray import add_video_ray_options
    from rapidpose.video.pipeline import DECODERS, TRACKERS
    from rapidpose.video.tracking import tracker_defaults
    from rapidpose.video.writer import PRESETS

    track = tracker_defaults()
    p = sub.add_parser("video", help="track people and their keypoints through a video, camera or stream",
                       description="Tracked poses frame by frame. INPUT: a video file, a folder or glob of "
                                   "frames ('frames/*.jpg'), a webcam index (0) or a stream URL (rtsp://, "
                                   "http://). Several videos: several INPUTs, a folder or glob of video files, or "
                                   "a .txt file listing them, one a line; --out, --json and --jsonl then name "
                                   "folders, each video's outputs there as <name>.mp4, .json, .jsonl (a name met "
                                   "twice gets -2). A folder or glob is the frames of one video when it holds "
                                   "images (as it always was), else the video files it holds (.mp4, .mov, .mkv, "
                                   ".avi, .webm, ...), searched below. The mp4 keeps the "
                                   "input's frame rate and size; audio is dropped.")
    p.add_argument("input", metavar="INPUT", nargs="+",
                   help="video file, folder or glob of frames, webcam index or stream URL (rtsp://, http://); "
                        "or several videos: video files, folders or globs of them, .txt lists of them")
    add_network_options(p, model_help="hub name or checkpoint",
                        device_help="cpu, cuda, cuda:N or auto (GPU when there is one); with several videos, cuda "
                                    "is every visible GPU and a list names devices (cuda:0,2; cpu,cpu): a worker "
                                    "process each, loading the model once, each taking the next video when it ends "
                                    "one; one video runs on the first")
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
                   help="write an H.264 mp4 with skeletons, boxes and track ids; with several videos a folder "
                        "(default: none)")
    p.add_argument("--crf", type=number(int, 0, 51), default=23, help="x264 quality, 18 (best) .. 28 (smallest) (default 23)")
    p.add_argument("--preset", default="veryfast", choices=PRESETS,
                   help="x264 speed preset; ultrafast is the fastest, with larger files (default veryfast)")
    p.add_argument("--json", metavar="FILE",
                   help="one JSON document with every frame; with several videos a folder (default: none)")
    p.add_argument("--jsonl", metavar="FILE",
                   help="JSON Lines, one frame per line, written as frames finish; with several videos a folder "
                        "(default: none)")
    p.add_argument("--show", action="store_true",
                   help="show the drawn frames in a window, q quits; one input only (default off)")
    p.add_argument("--decoder", default="auto", choices=DECODERS,
                   help="video decoding: nvdec on the GPU (pip install 'rapidpose[nvdec]'), ffmpeg on the CPU, or "
                        "auto: nvdec when the frames go to a CUDA GPU and it can decode the file (default auto)")
    p.add_argument("--frames-per-batch", type=COUNT, default=None, metavar="B",
                   help="frames whose people share a network batch (default on GPUs 32 up to 1080p, fewer for "
                        "larger frames; 4 on CPUs; 1 live)")
    add_video_ray_options(p)


def _tracker_options(args) -> dict | None:
    """The tracker settings for track_frames: all of them with a tracker; with --track none, none, and
    an error if one was changed (it would be dropped silently)."""
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


def _settings(args, tracker_options):
    """The VideoSettings the options give (video.files: the same for one video, workers and Ray)."""
    from rapidpose.video.files import VideoSettings

    return VideoSettings(
        model=str(args.model), detector=args.detector, device=args.device, backend=args.backend,
        precision=args.precision, compile=args.compile, flip_test=args.flip, detector_threshold=args.threshold,
        dataset_index=args.dataset_index, tracker=args.track, tracker_options=tracker_options,
        oks_weight=args.oks_weight, detect_every=args.detect_every, smooth=args.smooth,
        frames_per_batch=args.frames_per_batch, rotate=args.rotate, fps=args.fps, crf=args.crf, preset=args.preset,
        decoder=args.decoder)


def run_video(args) -> int:
    from rapidpose.video.files import expand_inputs

    settings = _settings(args, _tracker_options(args))  # before anything is opened or loaded
    inputs = expand_inputs(args.input)
    if args.ray is not None:
        from rapidpose.cli.video_ray import run_video_on_ray

        return run_video_on_ray(args, inputs, settings)
    if not (args.out or args.json or args.jsonl or args.show):
        log.warning("no output asked for (--out, --json, --jsonl or --show): poses are computed and dropped")
    if inputs.many:
        return _run_files(args, inputs, settings)
    return _run_one(args, inputs.paths[0], settings)


def _run_files(args, inputs, settings) -> int:
    """Several videos, each to its outputs in the folders --out, --json, --jsonl name (video.files)."""
    from rapidpose.photos.devices import parse_devices
    from rapidpose.video.files import plan_jobs, run_files

    if args.show:
        raise InputError(f"--show shows one video in a window, and {len(inputs.paths)} are given: write --out FOLDER "
                         f"instead, or run the one to watch on its own")
    devices = parse_devices(args.device)
    jobs = plan_jobs(inputs.paths, args.out, args.json, args.jsonl)
    return run_files(jobs, settings, devices).exit_code()


def _run_one(args, path: str, settings) -> int:
    from rapidpose.photos.devices import parse_devices
    from rapidpose.video.sources import open_source

    devices = parse_devices(args.device)
    if len(devices) > 1:
        log.info("one video: it runs on %s (several videos are shared out over the devices of --device %s)",
                 devices[0], args.device)
    window = open_window() if args.show else None
    source = open_source(path, rotate=args.rotate, fps=args.fps)  # a bad input fails before the model loads
    if args.out:
        from rapidpose.video.drawing_process import start_worker

        start_worker()  # the mp4's worker process gets ready while the model loads
    est = settings.estimator(devices[0])
    stats = process_video(est, source, out=args.out, json_path=args.json, jsonl_path=args.jsonl, window=window,
                          **settings.video_options())
    log.info("%d frames, %d people in %.1f s (%.1f frames/s)%s", stats["frames"], stats["people"], stats["seconds"],
             stats["frames_per_s"], f"; wrote {args.out}" if args.out else "")
    if source.error:
        log.error("%s: %s; the outputs hold the %d frames before it", path, source.error, stats["frames"])
    if stats["interrupted"]:
        return 130
    return 1 if (source.error or stats["bad_frames"]) else 0
