"""Dynamic batching: the requests of all clients become one model call per batch, on worker threads.

Each worker thread owns one model (a `run(items) -> results` callable: one PoseEstimator on one
device) and takes jobs from one bounded queue that all workers share. It waits for a first job, then
gathers more until the batch holds `max_batch_size` or `max_wait` has passed since that first job,
whichever comes first, and calls `run` once on all of them. Under load the queue fills while the model
is busy and the next batch takes what is there at once, so batches grow with the load; an idle server
keeps a lone request waiting at most `max_wait`.

The event loop never waits for a model: `submit` puts a job in the queue without blocking (a full
queue raises QueueFull at once: the server answers 503) and awaits a future that the worker settles.
A model that raises fails its own batch only (BatchFailed for each of its jobs); the worker goes on.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger("rapidpose")

_STOP = object()  # one per worker, queued behind the jobs by close(): each worker ends at its own


class QueueFull(Exception):
    """The queue holds its maximum of jobs (or the batcher is closing): try again later."""


class BatchFailed(Exception):
    """The model raised on the batch this job was in (the message says what it raised)."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """Hand the outcome to the job's event loop (futures are not thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the loop is closed: nobody waits for this answer any more
            pass


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Jobs from any number of coroutines -> batches -> `runners` (one worker thread each).

    runners: one callable per worker, list of items -> list of results (same length and order).
    max_wait: seconds a batch stays open after its first job. queue_size: jobs that may wait (not
    counting those in a running batch). on_batch(size, seconds, failed), when set, is called by a
    worker after each batch (make_app sets it: the metrics)."""

    on_batch: Callable[[int, float, bool], None] | None = None

    def __init__(self, runners: Sequence[Callable[[list], list]], max_batch_size: int = 64,
                 max_wait: float = 0.005, queue_size: int = 256):
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.max_batch_size = max(int(max_batch_size), 1)
        self.max_wait = max(float(max_wait), 0.0)
        self.queue_size = max(int(queue_size), 1)
        self._queue: queue.Queue = queue.Queue(self.queue_size)
        self._threads = [threading.Thread(target=self._work, args=(run,), name=f"rapidpose-serve-{i}", daemon=True)
                         for i, run in enumerate(runners)]
        self._closing = False

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker (the queue depth)."""
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        """No room for another job now (or closing): a quick check before the work of a request."""
        return self._closing or self._queue.full()

    @property
    def alive(self) -> bool:
        """Started, not closing, and every worker is running."""
        return not self._closing and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    async def submit(self, item):
        """The result of `item`, once its batch has run. QueueFull at once when there is no room;
        BatchFailed when the model raised on its batch."""
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), loop)
        if self._closing:
            raise QueueFull("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue_size} requests are already waiting") from None
        return await job.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the workers finish every queued one, then stop them (blocks: call it
        off the event loop)."""
        self._closing = True
        running = [t for t in self._threads if t.is_alive()]  # none when closed before, or never started
        for _ in running:
            self._queue.put(_STOP)  # waits for room: the workers are draining the queue
        for thread in running:
            thread.join(timeout)

    def _work(self, run) -> None:
        while True:
            jobs, stop = self._gather()
            jobs = [job for job in jobs if not job.future.cancelled()]
            if jobs:
                self._run(run, jobs)
            if stop:
                return

    def _gather(self) -> tuple[list[_Job], bool]:
        """One batch: the first job (waiting as long as it takes), then whatever comes until the batch
        is full or max_wait after the first. True with it when a stop came instead of a job."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch_size:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, run, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        failed = False
        try:
            results = run([job.item for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"the model gave {len(results)} results for {len(jobs)} requests")
        except Exception as exc:  # one batch fails, the worker goes on
            failed = True
            log.error("a batch of %d request(s) failed: %s: %s", len(jobs), type(exc).__name__, exc, exc_info=True)
            for job in jobs:
                job.settle(error=BatchFailed(f"{type(exc).__name__}: {exc}"))
        else:
            for job, result in zip(jobs, results):
                job.settle(result)
        if self.on_batch is not None:
            self.on_batch(len(jobs), time.perf_counter() - start, failed)
