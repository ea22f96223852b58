"""`rapidpose video`: tracked poses of a video, folder of frames, webcam or stream -> mp4, JSON, JSONL."""
from __future__ import annotations

import logging

from rapidpose.video.process import open_window, process_video

log = logging.getLogger("rapidpose")


def add_video_parser(sub) -> None:
    from rapidpose.runtime import BACKENDS
    from rapidpose.runtime.torch_runtime import PRECISIONS
    from rapidpose.video.pipeline import DECODERS, TRACKERS
    from rapidpose.video.writer import PRESETS

    p = sub.add_parser("video", help="track people and their keypoints through a video, camera or stream",
                       description="Tracked poses frame by frame. INPUT: a video file, a folder or glob of "
                                   "frames ('frames/*.jpg'), a webcam index (0) or a stream URL (rtsp://, "
                                   "http://). The mp4 keeps the input's frame rate and size; audio is dropped.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("--model", default="vitpose-b", help="hub name or checkpoint (default vitpose-b)")
    p.add_argument("--detector", default="rtmdet-nano", help="rtmdet-nano, yolox-nano, a path, or none")
    p.add_argument("--threshold", type=float, default=0.3, help="person box score threshold (default 0.3)")
    p.add_argument("--track", default="bytetrack", choices=TRACKERS)
    p.add_argument("--oks-weight", type=float, default=0.0,
                   help="share of keypoint similarity (OKS) in track association, 0..1 (default 0: boxes only)")
    p.add_argument("--detect-every", type=int, default=1, metavar="N",
                   help="run the detector on every Nth frame; the tracker carries the boxes between")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of keypoints per track")
    p.add_argument("--rotate", type=int, default=0, choices=[0, 90, 180, 270], help="degrees clockwise")
    p.add_argument("--fps", type=float, default=None, help="frame rate of image sequences (default 30)")
    p.add_argument("--out", metavar="VIDEO", help="write an H.264 mp4 with skeletons, boxes and track ids")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, 18 (best) .. 28 (smallest); default 23")
    p.add_argument("--preset", default="veryfast", choices=PRESETS, help="x264 speed preset (default veryfast)")
    p.add_argument("--json", metavar="FILE", help="one JSON document with every frame")
    p.add_argument("--jsonl", metavar="FILE", help="JSON Lines, one frame per line, written as frames finish")
    p.add_argument("--show", action="store_true", help="show the drawn frames in a window (q quits)")
    p.add_argument("--flip", action="store_true", help="flip test (twice the network work)")
    p.add_argument("--device", default="auto")
    p.add_argument("--decoder", default="auto", choices=DECODERS,
                   help="video decoding: nvdec on the GPU (pip install 'rapidpose[nvdec]'), ffmpeg on the CPU, or "
                        "auto (nvdec when the frames go to a CUDA GPU and it can decode the file)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--frames-per-batch", type=int, default=None,
                   help="frames whose people share a network batch (default on GPUs 32 up to 1080p, fewer for "
                        "larger frames; 4 on CPUs; 1 live)")
    p.add_argument("--dataset-index", type=int, default=0)


def run_video(args) -> int:
    from rapidpose.topdown.estimator import PoseEstimator
    from rapidpose.video.sources import open_source

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
                          preset=args.preset, header={"model": str(args.model)}, decoder=args.decoder)
    log.info("%d frames, %d people in %.1f s (%.1f frames/s)%s", stats["frames"], stats["people"], stats["seconds"],
             stats["frames_per_s"], f"; wrote {args.out}" if args.out else "")
    if source.error:
        log.error("%s: %s; the outputs hold the %d frames before it", args.input, source.error, stats["frames"])
    if stats["interrupted"]:
        return 130
    return 1 if (source.error or stats["bad_frames"]) else 0
