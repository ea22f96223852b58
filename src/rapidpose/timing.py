"""Per-stage wall-clock timing for benchmarks; a no-op unless a StageTimer is attached."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext


class StageTimer:
    """Adds up the seconds spent in each named stage. `sync` (e.g. torch.cuda.synchronize) runs at
    each boundary so that asynchronous GPU work is charged to the stage that queued it."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[stage] += time.perf_counter() - start


def no_timer(stage: str):
    return nullcontext()
