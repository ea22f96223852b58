"""Progress bars for long work: shown on a terminal, silent in logs, pipes, CI and under `-q`."""
from __future__ import annotations

import logging
import sys


def enabled() -> bool:
    """Whether progress may be shown: stderr is a terminal and the 'rapidpose' logger has not been set
    above INFO (`rapidpose -q` sets it to ERROR; a program can do the same to silence rapidpose)."""
    level = logging.getLogger("rapidpose").level
    return sys.stderr.isatty() and not level > logging.INFO


def progress(total: int | None, desc: str, unit: str = "img"):
    """A progress bar on stderr, hidden when stderr is not a terminal (logs, pipes, CI) or when
    rapidpose is told to be quiet (see `enabled`)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled())
