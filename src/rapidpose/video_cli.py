"""`rapidpose video`: tracked poses of a video, folder of frames, webcam or stream -> mp4, JSON, JSONL."""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .errors import InputError

log = logging.getLogger("rapidpose")


def add_video_parser(sub) -> None:
    from .runtime import BACKENDS
    from .runtime.torch_runtime import PRECISIONS
    from .video import DECODERS, TRACKERS
    from .video_writer import PRESETS

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
    from .pipeline import PoseEstimator
    from .sources import open_source

    if not (args.out or args.json or args.jsonl or args.show):
        log.warning("no output asked for (--out, --json, --jsonl or --show): poses are computed and dropped")
    window = _open_window() if args.show else None
    source = open_source(args.input, rotate=args.rotate, fps=args.fps)  # a bad input fails before the model loads
    if args.out:
        from .drawing_process import start_worker

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


def process_video(est, source, out=None, json_path=None, jsonl_path=None, window=None, tracker="bytetrack",
                  detect_every=1, smooth=False, frames_per_batch=None, oks_weight=0.0, crf=23, preset="veryfast",
                  header=None, encoders=None, decoder="auto") -> dict:
    """Track `source` (a FrameSource) with `est`, drawing into an mp4 (drawing_process.DrawnVideo) and
    writing JSON / JSONL as it goes; the files are closed on every way out. encoders: x264 encoders side
    by side (VideoWriter); decoder: video.track_frames's. Returns frames, people, bad_frames, seconds,
    frames_per_s, interrupted and closing_seconds (of seconds, those after the last frame: the mp4's
    last segments, the JSON)."""
    from .cli import progress
    from .records import FrameRecords, frame_record
    from .video import draws_on_device, track_frames

    header = {"source": source.name, "fps": source.fps, "width": source.size[0], "height": source.size[1],
              **(header or {}), "tracker": tracker, **est.skeleton.to_dict()}
    writer = None
    if out:  # drawn and encoded by a process of its own (drawing_process: the GIL)
        from .drawing_process import DrawnVideo

        writer = DrawnVideo(out, source.fps, source.size, est.skeleton, crf=crf, preset=preset, encoders=encoders,
                            frame_count=source.frame_count)
    records = FrameRecords(header, json_path, jsonl_path)
    frames = people = bad = 0
    interrupted = False
    start = time.perf_counter()
    draw_pool = ThreadPoolExecutor(2, thread_name_prefix="draw") if window else None
    drawn = deque()
    bar = progress(source.frame_count, source.name[-40:], unit="frame")
    on_device = (writer is not None or window is not None) and draws_on_device(est)  # drawn on the GPU
    try:
        for frame, poses in track_frames(est, source, tracker, detect_every, smooth, frames_per_batch,
                                         oks_weight=oks_weight, draw=on_device, decoder=decoder):
            if records.writing:
                records.add(frame_record(frame.index, frame.time, poses, frame.error))
            frames += 1
            people += len(poses)
            bad += not frame.ok
            if writer is not None and frame.ok:
                writer.write(frame, poses)  # a copy: the window's drawing below goes into the frame itself
            if draw_pool is not None and frame.ok:
                drawn.append(draw_pool.submit(_draw, frame, poses))
                while len(drawn) > 4 or (drawn and drawn[0].done()):
                    if _show(drawn.popleft().result(), window) == "quit":
                        raise KeyboardInterrupt
            bar.update(1)
            if frames % 16 == 0:  # formatting it for every frame costs more than the tracking of one
                bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.1f}", people=people, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted at frame %d: closing the outputs", frames)
    finally:
        tracked = time.perf_counter()
        bar.close()
        if draw_pool is not None:
            draw_pool.shutdown(wait=True, cancel_futures=True)
        if writer is not None:
            writer.close()
        records.close({"frames_done": frames, "interrupted": interrupted, "error": source.error})
        if window:
            import cv2

            cv2.destroyWindow(window)
    end = time.perf_counter()
    seconds = end - start
    return {"frames": frames, "people": people, "bad_frames": bad, "seconds": seconds,
            "frames_per_s": frames / max(seconds, 1e-9), "interrupted": interrupted, "closing_seconds": end - tracked}


def draw_frame(pixels, poses):
    """`poses` drawn into I420 pixels (H*3//2, W) in place (the encoder takes I420 without a colour
    conversion), or onto a copy of RGB pixels (H, W, 3)."""
    from .draw import draw_poses, draw_poses_i420

    return draw_poses_i420(pixels, poses) if pixels.ndim == 2 else draw_poses(pixels, poses)


def _draw(frame, poses):
    if frame.drawn is not None:  # drawn on the GPU
        return frame.drawn
    return draw_frame(frame.yuv if frame.yuv is not None else frame.image, poses)


def _show(image, window):
    """A drawn frame, RGB (H, W, 3) or I420 (H*3//2, W), in the window; "quit" when q was pressed."""
    import cv2

    cv2.imshow(window, cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420 if image.ndim == 2 else cv2.COLOR_RGB2BGR))
    if cv2.waitKey(1) & 0xFF == ord("q"):
        return "quit"
    return None


def _open_window() -> str:
    import cv2

    try:
        cv2.namedWindow("rapidpose", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise InputError("--show needs OpenCV with a GUI (pip install opencv-python instead of "
                         "opencv-python-headless) and a display; write --out VIDEO instead") from None
    return "rapidpose"
