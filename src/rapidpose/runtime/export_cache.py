"""Exports made on the fly, kept: a checkpoint run on ONNX Runtime or OpenVINO is exported once.

Loading a checkpoint and exporting it takes seconds (3.7 s for ViTPose-S to OpenVINO on a 2-core CPU)
while reading the exported file back takes a fraction of one; a command over a folder of a hundred
photos spent most of its time there. Exports are kept under the cache folder (hub.cache_dir(),
"exported/"), named by what they come from: the checkpoint file's (or folder's files') resolved path,
size and modification time, the expert (dataset_index), the backend and rapidpose's version. A
checkpoint changed in place gets a new export; an old one is never used for it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("rapidpose")

_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}


def _fingerprint(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def export_key(checkpoint: Path, dataset_index: int, backend: str) -> str:
    from rapidpose import __version__

    what = json.dumps([_fingerprint(Path(checkpoint)), dataset_index, backend, __version__])
    return hashlib.sha256(what.encode()).hexdigest()[:24]


def cached_export(checkpoint: Path, dataset_index: int, backend: str) -> Path | None:
    """The kept export of this checkpoint for this backend, or None."""
    from rapidpose.hub import cache_dir

    path = cache_dir() / "exported" / export_key(checkpoint, dataset_index, backend) / _FILES[backend]
    return path if path.is_file() else None


def keep_export(checkpoint: Path, dataset_index: int, backend: str, export) -> Path:
    """Export with `export(path) -> path` into the cache and return the kept file. Written into a
    folder of its own first and renamed into place: a run that stops halfway, or two runs at once,
    leave either a whole export or none. Where the cache cannot be written, a temporary folder serves
    this run (said at info level)."""
    from rapidpose.hub import cache_dir

    final = cache_dir() / "exported" / export_key(checkpoint, dataset_index, backend)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".part-", dir=final.parent))
    except OSError as exc:
        log.info("the export of '%s' is not kept (%s): it is made again on each run", checkpoint, exc)
        work = Path(tempfile.mkdtemp(prefix="rapidpose-export-"))
        return export(work / _FILES[backend])
    try:
        export(work / _FILES[backend])
        try:
            os.rename(work, final)
        except OSError:  # another run kept the same export first: use theirs
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final / _FILES[backend]
