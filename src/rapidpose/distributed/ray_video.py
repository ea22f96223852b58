"""Ray: many videos over the machines of a Ray cluster, a worker (actor) per GPU, each with the model loaded once.

    from rapidpose.distributed.ray_data import plan_workers, ray_session
    from rapidpose.distributed.ray_video import RayVideoWorkers
    from rapidpose.video.files import Report, VideoSettings, plan_jobs, share_out

    jobs = plan_jobs(["/mnt/videos/a.mp4", "/mnt/videos/b.mp4"], jsonl="/mnt/poses")
    with ray_session("auto"):
        report = Report(len(jobs), "on Ray")
        with RayVideoWorkers(VideoSettings(model="/mnt/vitpose-b.pth"), plan_workers(), len(jobs)) as workers:
            share_out(workers, jobs, report)
        report.close()

Each file is done by video.files.process_file, the function of a run without Ray, into the outputs the
driver names (a FileJob): on a cluster, inputs and outputs must be on storage every node sees at the same
path (NFS, a shared volume). The files go to the workers one at a time, the biggest first, each to the
next worker that is free. A worker that dies (its node lost, out of memory) has its file reported as
failed, with where it ran; the other files go to the other workers. Ray is imported only here (extra `ray`).
"""
from __future__ import annotations

import threading
from collections import deque

from rapidpose.distributed.ray_data import import_ray
from rapidpose.errors import InputError
from rapidpose.video.files import FileResult, VideoSettings, biggest_first, not_started, process_file

_STOP_SECONDS = 120  # what a stopped worker may take to close the file in hand


class VideoWorker:
    """The actor: a PoseEstimator of `settings` on `device` ('cuda': the GPU Ray gives it; 'cpu'), and
    `process(job)` -> FileResult. Threaded (max_concurrency 2), so that `stop()` reaches a file in
    progress, which then ends with its outputs closed, as Ctrl-C ends a run without Ray."""

    def __init__(self, settings: VideoSettings, device: str):
        import socket

        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        self.where = f"{socket.gethostname()} " + (f"GPU {','.join(map(str, gpus))}" if gpus else device)
        self.settings, self.problem, self.est = settings, None, None
        self._stopping = threading.Event()
        try:
            self.est = settings.estimator(device)
        except Exception as exc:  # noqa: BLE001 (a wrong model or detector: said by the driver, once)
            self.problem = f"{type(exc).__name__}: {exc}"

    def ready(self) -> tuple[str, str | None]:
        """(where it runs, why it could not start or None)."""
        return self.where, self.problem

    def process(self, job) -> FileResult:
        return process_file(self.est, self.settings, job, self._check, self.where)

    def _check(self, frames: int) -> None:
        if self._stopping.is_set():
            raise KeyboardInterrupt  # process_video closes the outputs

    def stop(self) -> None:
        self._stopping.set()


class _Actor:
    def __init__(self, handle):
        self.handle, self.where, self.job, self.alive = handle, "a Ray worker", None, True


class RayVideoWorkers:
    """`plan.workers` VideoWorkers (at most one per file), `plan.gpus` GPUs and `plan.cpus` CPUs each
    (ray_data.plan_workers), on the connected cluster; `run(jobs)` shares the files out. A context
    manager: the workers end with it."""

    def __init__(self, settings: VideoSettings, plan, files: int):
        ray = import_ray()
        remote = ray.remote(num_gpus=plan.gpus, num_cpus=plan.cpus, max_concurrency=2, max_restarts=0)(VideoWorker)
        device = "cuda" if plan.gpus else "cpu"
        self._actors = [_Actor(remote.remote(settings, device)) for _ in range(max(1, min(plan.workers, files)))]
        self._todo: deque = deque()
        self._pending: dict = {}  # a running file's ObjectRef -> its _Actor
        try:
            answers = ray.get([actor.handle.ready.remote() for actor in self._actors])
            for actor, (where, problem) in zip(self._actors, answers):
                actor.where = where
                if problem is not None:
                    raise InputError(f"the Ray worker on {where} could not start: {problem}")
        except ray.exceptions.RayActorError as exc:  # it died before it could say why (its node, its imports)
            self.close()
            raise InputError(f"a Ray worker could not start: {_first_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> list[str]:
        """Where each worker runs (host, GPU)."""
        return [actor.where for actor in self._actors]

    def run(self, jobs, on_frames=None):
        """A FileResult for each job as its file ends, in no particular order, the biggest files first.
        on_frames: taken for video.files.share_out; Ray workers say nothing until a file ends."""
        ray = import_ray()
        self._todo = deque(biggest_first(jobs))
        for actor in self._actors:
            self._give(actor)
        while self._pending:
            (ref,), _ = ray.wait(list(self._pending), num_returns=1)
            actor = self._pending.pop(ref)
            result = self._result(ray, ref, actor)
            actor.job = None
            yield result
            self._give(actor)
        while self._todo:  # every worker stopped
            yield not_started(self._todo.popleft(), "not processed: no Ray worker is left (see the errors above)")

    def _give(self, actor: _Actor) -> None:
        if actor.alive and self._todo:
            actor.job = self._todo.popleft()
            self._pending[actor.handle.process.remote(actor.job)] = actor

    def _result(self, ray, ref, actor: _Actor) -> FileResult:
        job = actor.job
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            actor.alive = False
            others = ("the other files go to the other workers" if any(a.alive for a in self._actors)
                      else "no worker is left")
            why = f"the Ray worker on {actor.where} stopped ({_first_line(exc)}) while processing it: its outputs " \
                  f"are incomplete; {others}"
        except ray.exceptions.RayError as exc:  # the task itself failed (process_file reports a file's own errors)
            why = f"the Ray task failed on {actor.where}: {_first_line(exc)}"
        return FileResult(job.index, job.input, job.outputs(), actor.where, error=why)

    def interrupt(self) -> list[FileResult]:
        """After Ctrl-C: the files in progress stopped (outputs closed) and their results; the files not
        begun reported as such."""
        ray = import_ray()
        for actor in self._pending.values():
            actor.handle.stop.remote()
        refs = list(self._pending)
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=_STOP_SECONDS) if refs else ([], [])
        results = [self._result(ray, ref, self._pending[ref]) for ref in ready]
        for ref in late:  # never answered: its file is cut where it was
            job, where = self._pending[ref].job, self._pending[ref].where
            results.append(FileResult(job.index, job.input, job.outputs(), where, interrupted=True,
                                      error="interrupted; the worker did not close the outputs in time"))
        self._pending.clear()
        results.extend(not_started(job, "not started: the run was interrupted", interrupted=True) for job in self._todo)
        self._todo.clear()
        return results

    def close(self) -> None:
        ray = import_ray()
        for actor in self._actors:
            ray.kill(actor.handle)
        self._actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first_line(exc: Exception) -> str:
    """Ray's errors run over many lines (tracebacks, advice): the first says what happened."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
