"""Downloads of named models and detectors, cached once; offline they fail at once, saying what to pass instead.

Offline means either no network (the hub is asked once, without retries, and the answer comes in
seconds) or HF_HUB_OFFLINE=1 (nothing is asked: only files already downloaded are used, for models
and detectors alike).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from rapidpose.errors import DownloadError

PROBE_TIMEOUT_S = 5  # one look at the hub before downloading: an unreachable hub fails this fast
URL_TIMEOUT_S = 10  # per socket operation of a plain URL download (connect, each read)
_TRUE = {"1", "ON", "YES", "TRUE"}


def cache_dir() -> Path:
    """Where downloaded files live: $RAPIDPOSE_CACHE, else ~/.cache/rapidpose."""
    root = os.environ.get("RAPIDPOSE_CACHE") or Path.home() / ".cache" / "rapidpose"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: no download is tried at all."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _why(exc: BaseException) -> str:
    """An exception as a short clause: its type and first line, without a closing period."""
    text = (str(exc).strip().splitlines() or [""])[0][:160].rstrip(" .")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fail(what: str, why: str, instead: str) -> DownloadError:
    """One message: what could not be downloaded and why, which local file to pass, and HF_HUB_OFFLINE."""
    if offline():
        return DownloadError(f"could not download {what}: it is not in the cache, and HF_HUB_OFFLINE=1 is set, "
                             f"which skips the network. {instead}. Or unset HF_HUB_OFFLINE to download it.")
    return DownloadError(f"could not download {what}: {why}. {instead}. On a machine without internet, set "
                         f"HF_HUB_OFFLINE=1 to skip the network (only files already downloaded are used).")


def download_url(url: str, filename: str, *, what: str, instead: str) -> Path:
    """Fetch url into the cache as `filename` unless it is already there.

    what: how messages name the file ("the rtmdet-nano detector"); instead: the sentence that says
    which local file to pass instead ("Pass a local detector file instead: --detector ...")."""
    target = cache_dir() / filename
    if target.exists():
        return target
    if offline():
        raise _fail(what, "", instead)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response, \
                tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            shutil.copyfileobj(response, tmp)
        os.replace(tmp.name, target)
    except Exception as exc:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
        reason = getattr(exc, "reason", None)  # urllib's URLError: the socket error inside
        raise _fail(what, f"{url} could not be fetched ({_why(reason if isinstance(reason, BaseException) else exc)})",
                    instead) from None
    return target


def _hub_problem(exc: Exception, repo_id: str, name: str) -> str:
    """Why a look at the hub failed, as a clause."""
    import huggingface_hub
    from huggingface_hub import utils as errors  # the hub's error types, in every version

    if isinstance(exc, getattr(errors, "RepositoryNotFoundError", ())):
        return f"the hub has no public repository {repo_id} ({_why(exc)})"
    if isinstance(exc, getattr(errors, "EntryNotFoundError", ())):
        return f"the hub repository {repo_id} has no file {name}"
    if isinstance(exc, getattr(errors, "HfHubHTTPError", ())):
        status = getattr(getattr(exc, "response", None), "status_code", "an error")
        return f"the hub answered HTTP {status} for {repo_id}/{name}"
    endpoint = getattr(getattr(huggingface_hub, "constants", None), "ENDPOINT", "https://huggingface.co")
    return f"the Hugging Face hub ({endpoint}) could not be reached ({_why(exc)})"


def hf_download(repo_id: str, filenames: list[str], *, what: str, instead: str) -> list[Path]:
    """Files of a Hugging Face hub repository: from the local HF cache when there, else downloaded.

    huggingface_hub retries an unreachable hub for about 20 s, warning at each try; so before a
    download the hub is asked once, without retries, with a short timeout, and an unreachable hub
    fails at once with one message (the caller's `instead` says which local file to pass)."""
    import huggingface_hub

    paths, checked = [], False
    for name in filenames:
        try:
            paths.append(Path(huggingface_hub.hf_hub_download(repo_id, name, local_files_only=True)))
            continue
        except Exception:  # not in the cache (or a cache entry that cannot be read): fetch it
            pass
        where = f"{what} ({repo_id} on the Hugging Face hub)"
        if offline():
            raise _fail(where, "", instead)
        if not checked:
            try:
                url = huggingface_hub.hf_hub_url(repo_id, name)
                huggingface_hub.get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
            except Exception as exc:
                raise _fail(where, _hub_problem(exc, repo_id, name), instead) from None
            checked = True
        try:
            paths.append(Path(huggingface_hub.hf_hub_download(repo_id, name)))
        except Exception as exc:
            raise _fail(where, _hub_problem(exc, repo_id, name), instead) from None
    return paths
