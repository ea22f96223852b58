"""Progress bars for long work: shown on a terminal, silent in logs, pipes and CI."""
from __future__ import annotations

import sys


def progress(total: int | None, desc: str, unit: str = "img"):
    """A progress bar on stderr, hidden when stderr is not a terminal (logs, pipes, CI)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty())
