"""Per-frame results of a video as JSON (one document) or JSON Lines (one frame per line, flushed).

Both are written while the video runs. JSON Lines can be read as it grows and loses nothing but
the frame being written if the process dies; the JSON document is closed properly on every normal
end, an error or Ctrl-C. Frames without people are kept (an empty `people` list).
"""
from __future__ import annotations

import json
from pathlib import Path

from rapidpose.results import Poses


def frame_record(index: int, time: float, poses: Poses | None, error: str | None = None) -> dict:
    """{"frame", "time", "people": [{"box", "box_score", "keypoints", "track_id"}]} (+ "error"): each
    person as `predict --json` writes one (Poses.to_list: keypoints [[x, y, score], ...]) plus their
    track_id, -1 where none (not confirmed yet, or no tracker)."""
    people = poses.to_list() if poses else []
    if poses and poses.track_ids is None:  # --track none
        for person in people:
            person["track_id"] = -1
    record = {"frame": int(index), "time": round(float(time), 4), "people": people}
    if error:
        record["error"] = error
    return record


class FrameRecords:
    """`add(record)` per frame; `close(summary)` ends the files. A context manager.

    json_path gets the header ({"source", "fps", "width", "height", "model", "tracker", "name",
    "keypoint_names", "skeleton"}: the keys of `predict --json` where they mean the same), then
    "frames": [...], then the summary ("frames_done", "interrupted", "error"); jsonl_path gets one frame
    record per line.
    """

    def __init__(self, header: dict, json_path=None, jsonl_path=None):
        self._json = self._jsonl = None
        self.frames = 0
        self.writing = bool(json_path or jsonl_path)  # else there is no need to make records
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            self._json = open(json_path, "w", encoding="utf-8")
            head = json.dumps({**header, "frames": []}, indent=None)
            self._json.write(head[:-2])  # everything up to the frames' closing "]}"
        if jsonl_path:
            Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(jsonl_path, "w", encoding="utf-8")

    def add(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        if self._json:
            self._json.write(("\n" if self.frames == 0 else ",\n") + line)
        if self._jsonl:
            self._jsonl.write(line + "\n")
            self._jsonl.flush()  # readers of a live stream see each frame at once
        self.frames += 1

    def close(self, summary: dict | None = None) -> None:
        if self._json:
            tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in (summary or {}).items())
            self._json.write("\n]" + tail + "}\n")
            self._json.close()
            self._json = None
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
