"""Per-image results of a photo run, written as each image finishes, and read back to resume a run.

- JSON: one document, `{"model", "name", "keypoint_names", "skeleton", "images": [...], "images_done",
  "interrupted", "error"}`, streamed: the header first, each image's entry as it finishes, the closing
  keys on every way out (the normal end, an error, Ctrl-C). Memory holds one entry at a time.
- JSON Lines: the same entries, one per line, flushed after each: readable while the run goes, and
  whole lines but the one being written if the process dies.
- COCO keypoint results: one JSON array, streamed the same way.

`JsonStream` and `JsonLines` are the plain writers (any items: frames of a video as well as photos);
`PhotoRecords` puts the three outputs of `rapidpose predict` together. `scan_jsonl` reads a JSON Lines
file of an interrupted run back (which images it holds, what to drop) so that `--resume` can complete it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rapidpose.errors import InputError
from rapidpose.results import Poses
from rapidpose.skeletons import Skeleton

log = logging.getLogger("rapidpose")


def _line(item) -> str:
    return json.dumps(item, separators=(",", ":"))


class JsonStream:
    """A JSON value written item by item, never held whole: with `key`, the document
    {**header, key: [items...], **trailer}; without, a bare array [items...]. `add(item)` per item,
    `close(trailer)` ends it (valid JSON from then on). A context manager: closed on any way out."""

    def __init__(self, path, header: dict | None = None, key: str | None = None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.items = 0
        self._keyed = key is not None
        self._file = open(path, "w", encoding="utf-8")
        if self._keyed:
            head = json.dumps({**(header or {}), key: []})
            self._file.write(head[:-2])  # everything up to the list's closing "]}"
        else:
            self._file.write("[")

    def add(self, item) -> None:
        self._file.write(("\n" if self.items == 0 else ",\n") + _line(item))
        self.items += 1

    def flush(self) -> None:
        """Hand what was added to the system: a reader of the growing file (tail -f) sees it, and a
        process killed outright (no Ctrl-C: no closing keys) leaves every entry added up to here."""
        self._file.flush()

    def close(self, trailer: dict | None = None) -> None:
        if self._file is None:
            return
        tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in (trailer or {}).items()) if self._keyed else ""
        self._file.write("\n]" + tail + ("}" if self._keyed else "") + "\n")
        self._file.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class JsonLines:
    """One JSON item per line, each line flushed as it is added (readers of a growing file see whole
    lines). append: continue an existing file (its last line must be whole: see scan_jsonl)."""

    def __init__(self, path, append: bool = False):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.items = 0
        self._file = open(path, "a" if append else "w", encoding="utf-8")

    def add(self, item) -> None:
        self._file.write(_line(item) + "\n")  # one write per line: a kill leaves at most the last one unfinished
        self._file.flush()
        self.items += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def photo_record(image, size: tuple[int, int] | None = None, poses: Poses | None = None, error=None) -> dict:
    """One image's entry: {"image", "width", "height", "people": [...]} (people as Poses.to_list writes
    them), or {"image", "error", "people": []} for an image that could not be used. size: (width, height)."""
    if error is not None:
        return {"image": str(image), "error": str(error), "people": []}
    width, height = size
    return {"image": str(image), "width": int(width), "height": int(height),
            "people": poses.to_list() if poses is not None else []}


def poses_from_record(entry: dict, skeleton: Skeleton) -> Poses:
    """The Poses of an entry written by photo_record (coordinates to 0.01 px, scores to 4 decimals, as
    written): what a resumed run needs to make the COCO results of images done before."""
    people = entry.get("people", [])
    if not people:
        return Poses.empty(skeleton)
    keypoints = [[kp[:2] for kp in p["keypoints"]] for p in people]
    scores = [[kp[2] for kp in p["keypoints"]] for p in people]
    return Poses([p["box"] for p in people], [p.get("box_score", 1.0) for p in people], keypoints, scores, skeleton)


class PhotoRecords:
    """The outputs of a photo run, each optional, written as each image finishes (`add` in input order):
    json_path a JsonStream document (header, "images": [...], then `close`'s trailer), jsonl_path
    JSON Lines of the same entries (append: continue the file of an earlier run), coco_path a JsonStream
    array of COCO keypoint results. A context manager: everything is closed on any way out."""

    def __init__(self, header: dict, json_path=None, jsonl_path=None, coco_path=None, append: bool = False):
        self.images = 0
        self._json = self._jsonl = self._coco = None
        try:
            if jsonl_path:
                self._jsonl = JsonLines(jsonl_path, append=append)
            if json_path:
                self._json = JsonStream(json_path, header, key="images")
            if coco_path:
                self._coco = JsonStream(coco_path)
        except BaseException:
            self.close()
            raise

    @property
    def writing(self) -> bool:
        return any(out is not None for out in (self._json, self._jsonl, self._coco))

    def add(self, entry: dict, coco=(), earlier: bool = False) -> None:
        """One image's entry (photo_record) and its COCO results. earlier: an entry already in the
        JSON Lines file (resuming): written to the JSON document and COCO results only."""
        if self._jsonl is not None and not earlier:
            self._jsonl.add(entry)
        if self._json is not None:
            self._json.add(entry)
            if not earlier:
                self._json.flush()
        if self._coco is not None:
            for result in coco:
                self._coco.add(result)
            if not earlier:
                self._coco.flush()
        self.images += 1

    def close(self, trailer: dict | None = None) -> None:
        """End every file; the JSON document gets `trailer`'s keys after "images"."""
        for out in (self._jsonl, self._coco):
            if out is not None:
                out.close()
        if self._json is not None:
            self._json.close(trailer)
        self._json = self._jsonl = self._coco = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class EarlierRun:
    """What scan_jsonl found in the JSON Lines file of an earlier run. done: the "image" strings of
    its good lines (the first line of each image); kept: how many lines those are; errors: lines with
    an "error" (those images are tried again); repeats: second good lines of an image; blanks: empty
    lines; unfinished: the last line was cut off (a run killed while writing it); keypoints: keypoints
    per person in the kept lines, None when nobody was found."""

    path: Path
    done: set = field(default_factory=set)
    kept: int = 0
    errors: int = 0
    repeats: int = 0
    blanks: int = 0
    unfinished: bool = False
    keypoints: int | None = None
    _keep: list = field(default_factory=list, repr=False)  # byte ranges of the kept lines
    _whole: int = 0  # where the whole lines end (the unfinished last line starts)

    @property
    def dropped(self) -> int:
        return self.errors + self.repeats + self.blanks + self.unfinished

    def tidy(self) -> None:
        """Make the file hold only the kept lines, ready to append to. An unfinished last line alone is
        cut off in place; lines dropped in the middle mean a copy of the kept ones that then replaces the
        file (os.replace: at every moment the path holds one of the two, whole)."""
        if self.errors or self.repeats or self.blanks:
            partial = self.path.with_name(self.path.name + ".resuming")
            try:
                with open(self.path, "rb") as old, open(partial, "wb") as new:
                    for start, end in self._keep:
                        old.seek(start)
                        new.write(old.read(end - start))
                    new.flush()
                    os.fsync(new.fileno())
                os.replace(partial, self.path)
            finally:
                partial.unlink(missing_ok=True)
        elif self.unfinished:
            os.truncate(self.path, self._whole)


_START = b'{"image":'  # how every line JsonLines writes for photo_record begins


def _is_record(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("people"), list)
            and ("error" in entry or ("width" in entry and "height" in entry)))


def scan_jsonl(path) -> EarlierRun:
    """Read the JSON Lines file of an earlier `predict --jsonl` run (a missing file: nothing done yet).

    Images are told apart by their "image" string. A line with an "error" is dropped (its image is
    tried again), as are a second good line of an image, blank lines, and a last line cut off while it
    was written (not JSON, or no newline at its end). Any other line that is not an image's entry is an
    InputError, the file left as it is: it is not predict's JSON Lines. Nothing is changed here;
    `tidy()` drops what is dropped."""
    path = Path(path)
    run = EarlierRun(path)
    if not path.exists():
        return run
    if path.is_dir():
        raise InputError(f"--jsonl '{path}' is a folder: give the JSON Lines file of the run to resume")
    size = path.stat().st_size
    keep, offset = [], 0
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                run.blanks += 1
                continue
            try:
                entry = json.loads(raw)
            except ValueError:  # UnicodeDecodeError too
                entry = None
            whole = raw.endswith(b"\n") and _is_record(entry)
            if not whole and offset == size and raw.startswith(_START) and (entry is None or _is_record(entry)):
                run.unfinished = True  # the last line, cut off while it was written: its image is done again
                run._whole = start
                break
            if not whole:
                raise InputError(
                    f"line {number} of '{path}' is not an image's entry of `rapidpose predict --jsonl` "
                    f"({{\"image\", \"width\", \"height\", \"people\"}} or {{\"image\", \"error\", \"people\"}}), so "
                    f"--resume cannot continue this file: give --jsonl the file of the run to resume, or a new "
                    f"file name (without --resume) to start afresh")
            if "error" in entry:
                run.errors += 1
                continue
            if entry["image"] in run.done:
                run.repeats += 1
                continue
            for person in entry["people"]:
                count = len(person.get("keypoints", ()))
                if run.keypoints is None:
                    run.keypoints = count
                elif count != run.keypoints:
                    raise InputError(f"line {number} of '{path}' has people with {count} keypoints, the lines before "
                                     f"{run.keypoints}: the file mixes models; resume it with the model that began it")
            run.done.add(entry["image"])
            run.kept += 1
            if keep and keep[-1][1] == start:  # adjacent kept lines: one range, copied at once
                keep[-1] = (keep[-1][0], offset)
            else:
                keep.append((start, offset))
    run._keep = keep
    return run


def read_jsonl(path):
    """The entries of a JSON Lines file, one at a time (after scan_jsonl + tidy: every line is whole)."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
