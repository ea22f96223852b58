"""A video run to its outputs: tracked poses drawn into an mp4 (by a process of its own), JSON / JSON Lines records, a window."""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from rapidpose.draw.cpu import draw_frame
from rapidpose.errors import InputError
from rapidpose.progress import progress

log = logging.getLogger("rapidpose")


def process_video(est, source, out=None, json_path=None, jsonl_path=None, window=None, tracker="bytetrack",
                  detect_every=1, smooth=False, frames_per_batch=None, oks_weight=0.0, crf=23, preset="veryfast",
                  header=None, encoders=None, decoder="auto", tracker_options=None, on_frame=None) -> dict:
    """Track `source` (a FrameSource) with `est`, drawing into an mp4 (drawing_process.DrawnVideo) and
    writing JSON / JSONL as it goes; the files are closed on every way out. encoders: x264 encoders side
    by side (VideoWriter); decoder and tracker_options: video.track_frames's. on_frame: called with the
    frames done so far after each frame (a worker's progress); raising KeyboardInterrupt there ends the
    run as Ctrl-C does, the outputs closed. Returns frames, people,
    bad_frames, seconds, frames_per_s, interrupted and closing_seconds (of seconds, those after the last
    frame: the mp4's last segments, the JSON)."""
    from rapidpose.video.pipeline import draws_on_device, track_frames
    from rapidpose.video.records import FrameRecords, frame_record

    header = {"source": source.name, "fps": source.fps, "width": source.size[0], "height": source.size[1],
              **(header or {}), "tracker": tracker, **est.skeleton.to_dict()}
    writer = None
    if out:  # drawn and encoded by a process of its own (drawing_process: the GIL)
        from rapidpose.video.drawing_process import DrawnVideo

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
                                         oks_weight=oks_weight, draw=on_device, decoder=decoder,
                                         tracker_options=tracker_options):
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
            if on_frame is not None:
                on_frame(frames)
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


def open_window() -> str:
    import cv2

    try:
        cv2.namedWindow("rapidpose", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise InputError("--show needs OpenCV with a GUI (pip install opencv-python instead of "
                         "opencv-python-headless) and a display; write --out VIDEO instead") from None
    return "rapidpose"
