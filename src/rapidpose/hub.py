"""Downloads of named models and detectors, cached once; offline they fail saying what to pass instead."""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from rapidpose.errors import DownloadError


def cache_dir() -> Path:
    """Where downloaded files live: $RAPIDPOSE_CACHE, else ~/.cache/rapidpose."""
    root = os.environ.get("RAPIDPOSE_CACHE") or Path.home() / ".cache" / "rapidpose"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline_hint(what: str, flag: str) -> str:
    return (f"On a machine without internet, download {what} elsewhere and pass the local file instead "
            f"({flag} /path/to/file).")


def download_url(url: str, filename: str, *, what: str, flag: str) -> Path:
    """Fetch url into the cache as `filename` unless it is already there."""
    target = cache_dir() / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, \
                tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            shutil.copyfileobj(response, tmp)
        os.replace(tmp.name, target)
    except Exception as exc:
        raise DownloadError(f"could not download {what} from {url} ({exc}). {_offline_hint(what, flag)}") from None
    return target


def hf_download(repo_id: str, filenames: list[str], *, what: str, flag: str) -> list[Path]:
    """Files of a Hugging Face hub repository, from the local HF cache when present."""
    from huggingface_hub import hf_hub_download

    paths = []
    for name in filenames:
        try:
            try:
                path = hf_hub_download(repo_id, name, local_files_only=True)
            except Exception:
                path = hf_hub_download(repo_id, name)
        except Exception as exc:
            raise DownloadError(
                f"could not download {what} ({repo_id}/{name}): {type(exc).__name__}: {exc}. "
                f"{_offline_hint(what, flag)}") from None
        paths.append(Path(path))
    return paths
