"""Many videos to their outputs: one after another in this process, or shared out over a worker process per device.

    inputs = expand_inputs(["a.mp4", "clips/", "more.txt"])          # Inputs(paths=[...], many=True)
    jobs = plan_jobs(inputs.paths, jsonl="poses/", out="drawn/")       # poses/a.jsonl, drawn/a.mp4, ...
    settings = VideoSettings(model="vitpose-b")
    results = run_files(jobs, settings, parse_devices("cuda"))         # a FileResult per file, in input order

`process_file(est, settings, job)` does one file to its outputs (video.process.process_video, what a
run of one input does); the loop here, the device workers and the Ray workers (distributed.ray_video)
all call it, with the same picklable VideoSettings.

Several devices (`--device cuda` on a host with several GPUs, a list such as cuda:0,2 or cpu,cpu): a
worker process per device (worker_process.py: a fresh interpreter), each loading the model once and asking for the next file when it finishes one; the biggest files go first,
so that a long one does not start last. Each worker writes its files' outputs itself and tells this
process how far it is. A worker that dies (a crash, out of memory, killed) has the file it held reported
as failed, with its device and exit code; the other files go to the other workers. Nothing is lost
silently: every file ends with a FileResult, done, failed or not started.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from rapidpose.errors import InputError, RapidPoseError
from rapidpose.io import IMAGE_SUFFIXES, name_a_few
from rapidpose.progress import progress
from rapidpose.video.process import process_video
from rapidpose.video.sources import STREAM_SCHEMES
from rapidpose.worker_process import WorkerGroup, WorkerProcess

log = logging.getLogger("rapidpose")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                  ".wmv", ".3gp", ".ogv", ".h264", ".h265", ".hevc", ".y4m"}
LIST_SUFFIX = ".txt"  # a text file names videos, one a line
_STOP_SECONDS = 120  # what a stopped worker may take to close the file in hand (the mp4's last segments)


@dataclass
class VideoSettings:
    """How every file of a run is done: the PoseEstimator (model .. dataset_index) and the tracking,
    drawing and encoding (tracker .. decoder) of process_video. Plain values: it goes to worker processes
    and Ray workers as it is."""

    model: str = "vitpose-b"
    detector: str | None = "rtmdet-nano"
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    compile: bool = False
    flip_test: bool = False
    detector_threshold: float = 0.3
    dataset_index: int = 0
    tracker: str = "bytetrack"
    tracker_options: dict | None = None
    oks_weight: float = 0.0
    detect_every: int = 1
    smooth: bool = False
    frames_per_batch: int | None = None
    rotate: int = 0
    fps: float | None = None
    crf: int = 23
    preset: str = "veryfast"
    decoder: str = "auto"

    def estimator(self, device: str | None = None):
        """The PoseEstimator of these settings, on `device` (default: self.device)."""
        from rapidpose.topdown.estimator import PoseEstimator

        return PoseEstimator(self.model, detector=self.detector, device=device or self.device,
                             flip_test=self.flip_test, detector_threshold=self.detector_threshold,
                             dataset_index=self.dataset_index, backend=self.backend, precision=self.precision,
                             compile=self.compile)

    def video_options(self) -> dict:
        """process_video's keyword arguments for these settings (all but the source and the outputs)."""
        return {"tracker": self.tracker, "detect_every": self.detect_every, "smooth": self.smooth,
                "frames_per_batch": self.frames_per_batch, "oks_weight": self.oks_weight, "crf": self.crf,
                "preset": self.preset, "header": {"model": str(self.model)}, "decoder": self.decoder,
                "tracker_options": self.tracker_options}


# ---------------------------------------------------------------- inputs and outputs

@dataclass
class Inputs:
    """The inputs of a run: paths (or a live source's name), and `many`: whether the outputs are folders
    (more than one INPUT given, or a folder, glob or list of videos, however many it holds)."""

    paths: list[str]
    many: bool


def is_live(spec: str) -> bool:
    """A webcam index (0) or a stream URL (rtsp://, http://, ...)."""
    return str(spec).isdigit() or str(spec).lower().startswith(STREAM_SCHEMES)


def expand_inputs(specs) -> Inputs:
    """The inputs of `rapidpose video`, each spec in order: a folder or glob holding video files ->
    those videos (searched below, sorted), unless it holds images too; a .txt file -> the inputs it lists;
    anything else (a video file, a folder or glob of frames, a webcam, a stream) -> itself, one input. Live
    sources cannot be mixed with others."""
    specs = [str(spec) for spec in specs]
    if not specs:
        raise InputError("no input given: pass a video file, a folder of videos or of frames, a .txt list of "
                         "videos, a webcam index (0) or a stream URL")
    paths, many = [], len(specs) > 1
    for spec in specs:
        if is_live(spec):
            paths.append(spec)
        elif (videos := _videos_in(spec)) is not None:
            paths.extend(videos)
            many = True
        elif Path(spec).suffix.lower() == LIST_SUFFIX:
            paths.extend(read_listing(spec))
            many = True
        else:
            paths.append(spec)
    live = [path for path in paths if is_live(path)]
    if many and live:
        raise InputError(f"'{live[0]}' is a live source (a webcam or a stream), which runs on its own: run "
                         f"`rapidpose video {live[0]} ...` by itself, and the files in a run of their own")
    return Inputs(paths, many)


def _videos_in(spec: str) -> list[str] | None:
    """The video files a folder (searched below) or glob holds, sorted; None when it holds images (the
    frames of one video, as before there were runs of several: a video beside them, the one they were cut
    from, say, is left out) or none, or `spec` is neither."""
    if glob.has_magic(spec):
        found = [Path(f) for f in sorted(glob.glob(spec, recursive=True))]
    elif Path(spec).expanduser().is_dir():
        found = sorted(Path(spec).expanduser().rglob("*"))
    else:
        return None
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in found):
        return None
    return [str(f) for f in found if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file()] or None


def read_listing(path) -> list[str]:
    """The inputs a text file names, one a line, in its order: blank lines and lines starting with '#'
    skipped, relative paths relative to the file's folder (the format of `predict --list`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        raise InputError(f"list of videos '{path}' does not exist") from None
    except OSError as exc:
        raise InputError(f"list of videos '{path}' could not be read: {exc.strerror or exc}") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise InputError(f"list of videos '{path}' names none: write one video path per line (blank lines and "
                         f"lines starting with '#' are skipped)")
    return [name if is_live(name) else str(path.parent / name) for name in names]


@dataclass
class FileJob:
    """One input and where its outputs go (None: not written). index: its position among the inputs."""

    index: int
    input: str
    out: str | None = None
    json: str | None = None
    jsonl: str | None = None

    def outputs(self) -> dict:
        return {name: value for name, value in (("out", self.out), ("json", self.json), ("jsonl", self.jsonl))
                if value}


def unique_stems(paths) -> list[str]:
    """A name for each input's outputs: its file name without the suffix (a folder's or glob's: that of its
    folder); a name met before gets -2, -3, ... (one no other input has as its own)."""
    stems = [_stem(str(path)) for path in paths]
    taken = {stem.casefold() for stem in stems}  # casefold: one file on case-insensitive file systems
    seen, names = set(), []
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in (seen if n == 1 else taken):
            n += 1
            name = f"{stem}-{n}"
        seen.add(name.casefold())
        taken.add(name.casefold())
        names.append(name)
    return names


def _stem(spec: str) -> str:
    path = Path(spec)
    if glob.has_magic(spec):  # 'clips/a/*.jpg' -> 'a'
        fixed = path.parts[:next(i for i, part in enumerate(path.parts) if glob.has_magic(part))]
        return (Path(*fixed).name if fixed else "") or "frames"
    return (path.resolve().name if path.is_dir() else path.stem) or "video"


def plan_jobs(paths, out=None, json=None, jsonl=None, many: bool = True) -> list[FileJob]:
    """A FileJob per input. One input (many False): the outputs as named. Else `out`, `json` and `jsonl`
    name folders (made here) and each input's outputs are <folder>/<stem>.mp4, .json, .jsonl
    (unique_stems); an output that would overwrite an input is refused."""
    paths = [str(p) for p in paths]
    if not many:
        return [FileJob(0, paths[0], out, json, jsonl)]
    folders = {}
    for option, value, suffix in (("--out", out, ".mp4"), ("--json", json, ".json"), ("--jsonl", jsonl, ".jsonl")):
        if not value:
            continue
        folder = Path(value)
        if folder.is_file() or (not folder.exists() and folder.suffix.lower() == suffix):
            raise InputError(f"{option} '{value}' names a file, but with several inputs ({len(paths)}) {option} names a "
                             f"folder: each input's {suffix} is written there as <name>{suffix}; give a folder")
        folders[option] = (folder, suffix)
    jobs = []
    for index, (path, stem) in enumerate(zip(paths, unique_stems(paths))):
        named = {option: str(folder / f"{stem}{suffix}") for option, (folder, suffix) in folders.items()}
        jobs.append(FileJob(index, path, named.get("--out"), named.get("--json"), named.get("--jsonl")))
    inputs = {Path(p).resolve() for p in paths if not is_live(p)}
    for job in jobs:
        for written in job.outputs().values():
            if Path(written).resolve() in inputs:
                raise InputError(f"the output '{written}' would overwrite the input of that name: give the outputs "
                                 f"a folder of their own")
    for folder, _ in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return jobs


# ---------------------------------------------------------------- one file

@dataclass
class FileResult:
    """What became of one file: frames and people done, unreadable frames, seconds, where it ran, and
    error: why it failed or stopped early (None: done). interrupted: Ctrl-C ended it (or it never started)."""

    index: int
    input: str
    outputs: dict = field(default_factory=dict)
    device: str = ""
    frames: int = 0
    people: int = 0
    bad_frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.interrupted and not self.bad_frames

    def summary(self) -> str:
        where = f" on {self.device}" if self.device else ""
        if not self.frames and self.error:
            return f"{self.input}{where}: {self.error}"
        line = (f"{self.input}{where}: {self.frames} frames, {self.people} people in {self.seconds:.1f} s "
                f"({self.frames / max(self.seconds, 1e-9):.1f} frames/s)")
        if self.bad_frames:
            line += f", {self.bad_frames} frames could not be read"
        if self.error:
            line += f"; {self.error}; the outputs hold the {self.frames} frames before it"
        elif self.interrupted:
            line += "; interrupted, the outputs closed"
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def process_file(est, settings: VideoSettings, job: FileJob, on_frame=None, device: str = "") -> FileResult:
    """One input to its outputs with `est` (settings.estimator()): what a run of one input does. A file
    that cannot be opened, or fails on the way, comes back with its error (the next file goes on); one
    that ends early (truncated, corrupt) with the error and the frames before it. on_frame:
    process_video's. device: where it ran, as the result says it."""
    from rapidpose.video.sources import open_source

    result = FileResult(job.index, job.input, job.outputs(), device)
    start = time.perf_counter()
    try:
        source = open_source(job.input, rotate=settings.rotate, fps=settings.fps)
        stats = process_video(est, source, out=job.out, json_path=job.json, jsonl_path=job.jsonl, on_frame=on_frame,
                              **settings.video_options())
    except RapidPoseError as exc:
        result.error = str(exc)
    except Exception as exc:  # noqa: BLE001 (a fault with one file must not end a run of many: it is reported)
        log.debug("%s failed", job.input, exc_info=True)
        result.error = f"{type(exc).__name__}: {exc}"
    else:
        result.frames, result.people, result.bad_frames = stats["frames"], stats["people"], stats["bad_frames"]
        result.error, result.interrupted = source.error, stats["interrupted"]
    result.seconds = time.perf_counter() - start
    return result


def not_started(job: FileJob, why: str, interrupted: bool = False) -> FileResult:
    return FileResult(job.index, job.input, job.outputs(), error=why, interrupted=interrupted)


def biggest_first(jobs) -> list[FileJob]:
    """The jobs, the largest files first (a long video started last would keep one worker busy alone)."""
    def size(job):
        try:
            return os.path.getsize(job.input)
        except OSError:  # a folder of frames, a missing file (reported when it is opened)
            return 0

    return sorted(jobs, key=size, reverse=True)


# ---------------------------------------------------------------- a run of many

class Report:
    """What a run of several files shows as it goes: each file's summary line as it ends ([done/total]),
    with `bar` a progress bar of the files done and the frames/s of them all (the files in progress
    too: `frames`), and at the end a line for the whole run. `results`: in input order."""

    def __init__(self, total: int, where: str, bar: bool = True):
        self.total, self.where = total, where
        self._results: list[FileResult] = []
        self._running: dict[int, int] = {}  # frames done so far of each file in progress, by job index
        self._start = time.perf_counter()
        self._bar = progress(total, "videos", unit="file") if bar else None
        self._shown = 0.0
        self._lines = contextlib.ExitStack()
        if self._bar is not None and not self._bar.disable:  # the summary lines above the bar, not through it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._lines.enter_context(logging_redirect_tqdm())

    @property
    def results(self) -> list[FileResult]:
        return sorted(self._results, key=lambda r: r.index)

    def _frames(self) -> int:
        return sum(r.frames for r in self._results) + sum(self._running.values())

    def frames(self, job: FileJob, frames: int) -> None:
        self._running[job.index] = frames
        now = time.perf_counter()
        if self._bar is not None and now - self._shown > 0.5:
            self._shown = now
            self._bar.set_postfix_str(f"{self._frames() / (now - self._start):.1f} frames/s")

    def add(self, result: FileResult) -> None:
        self._running.pop(result.index, None)
        self._results.append(result)
        level = (logging.WARNING if result.interrupted or (result.bad_frames and not result.error) else
                 logging.ERROR if result.error else logging.INFO)
        log.log(level, "[%d/%d] %s", len(self._results), self.total, result.summary())
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{self._frames() / (time.perf_counter() - self._start):.1f} frames/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._lines.close()
        seconds = time.perf_counter() - self._start
        done = [r for r in self._results if r.error is None and not r.interrupted]
        failed = [r.input for r in self.results if r.error is not None and not r.interrupted]
        frames, people = sum(r.frames for r in self._results), sum(r.people for r in self._results)
        log.info("%d of %d videos processed %s: %d frames, %d people in %.1f s (%.1f frames/s)%s", len(done),
                 self.total, self.where, frames, people, seconds, frames / max(seconds, 1e-9),
                 f"; {len(failed)} failed: {name_a_few(failed)}" if failed else "")

    def exit_code(self) -> int:
        """130 when interrupted, 1 when a file failed or had unreadable frames, else 0 (as for one input)."""
        if any(r.interrupted for r in self._results):
            return 130
        return 0 if all(r.ok for r in self._results) else 1


def run_files(jobs: list[FileJob], settings: VideoSettings, devices: list[str]) -> Report:
    """Every job, on `devices` (photos.devices.parse_devices): one device, one file after another here;
    several, a worker process each (at most one per file). The Report is closed; its `results` hold a
    FileResult for every job."""
    devices = list(devices)[:max(len(jobs), 1)]
    if len(devices) == 1:
        est = settings.estimator(devices[0])  # a wrong model stops the run here, before any file
        report = Report(len(jobs), f"on {devices[0]}", bar=False)  # each file has process_video's own bar
        try:
            for position, job in enumerate(jobs):
                try:
                    result = process_file(est, settings, job, device=devices[0])
                except KeyboardInterrupt:  # between frames it is process_video's; this is Ctrl-C while opening
                    result = not_started(job, "interrupted", interrupted=True)
                report.add(result)
                if result.interrupted:
                    for rest in jobs[position + 1:]:
                        report.add(not_started(rest, "not started: the run was interrupted", interrupted=True))
                    break
        finally:
            report.close()
        return report
    log.info("%d videos on %d devices (%s): a worker process each", len(jobs), len(devices), ", ".join(devices))
    with FileWorkers(devices, settings) as workers:
        report = Report(len(jobs), f"on {len(devices)} devices")
        try:
            share_out(workers, jobs, report)
        finally:
            report.close()
    return report


def share_out(workers, jobs: list[FileJob], report: Report) -> None:
    """`workers.run(jobs)`'s results into `report` as they come; Ctrl-C stops the files in progress (their
    outputs closed) and reports the rest as not started. workers: FileWorkers, or ray_video.RayVideoWorkers."""
    try:
        for result in workers.run(jobs, on_frames=report.frames):
            report.add(result)
    except KeyboardInterrupt:
        log.warning("interrupted: closing the outputs of the files in progress")
        for result in workers.interrupt():
            report.add(result)


class FileWorkers(WorkerGroup):
    """A worker process per device (see the module), each with the model of `settings` loaded. A context
    manager; `run(jobs)` shares the files out."""

    def __init__(self, devices: list[str], settings: VideoSettings):
        self._workers: list[_Worker] = []
        self._todo: deque = deque()
        level = max(log.getEffectiveLevel(), logging.WARNING)  # the workers' notes would interleave; this says them
        try:
            for device in devices:
                self._workers.append(_Worker(device, settings, level))
            for worker in self._workers:  # the models load in parallel; wait for each
                ready = worker.receive()
                if ready is None or ready[0] != "ready":
                    why = ready[1] if ready else f"it stopped ({_exit(worker.process.wait())})"
                    raise InputError(f"the worker on {worker.device} could not start: {why}")
        except BaseException:
            self.close()
            raise

    def pid(self, job: FileJob) -> int | None:
        """The process id of the worker doing `job`, None when none is (to watch or stop it)."""
        return next((w.process.pid for w in self._workers if w.job is job), None)

    def run(self, jobs, on_frames=None):
        """A FileResult for each job as its file ends, in no particular order, the biggest files first.
        on_frames(job, frames): a file's progress, about twice a second."""
        self._todo = deque(biggest_first(jobs))
        while True:
            for worker in self._workers:
                while worker.alive and worker.job is None and self._todo:
                    self._give(worker, self._todo.popleft())
            busy = {w.conn: w for w in self._workers if w.job is not None}
            if not busy:
                break
            for conn in wait(list(busy)):
                worker = busy[conn]
                message = worker.receive()
                if message is None:
                    yield self._lost(worker)
                elif message[0] == "frames":
                    if on_frames is not None:
                        on_frames(worker.job, message[1])
                else:  # ("done", FileResult)
                    worker.job = None
                    yield message[1]
        while self._todo:  # every worker stopped
            yield not_started(self._todo.popleft(), "not processed: no worker is left (see the errors above)")

    def _give(self, worker, job: FileJob) -> None:
        try:
            worker.send(("file", job))
        except OSError:  # it died since its last answer: the job was not begun
            self._todo.appendleft(job)
            self._lost(worker)
            return
        worker.job = job

    def _lost(self, worker) -> FileResult | None:
        """A worker that stopped: said once; the file it held (if any) is failed."""
        code = worker.process.wait()
        worker.alive = False
        job, worker.job = worker.job, None
        others = "the other files go to the other workers" if any(w.alive for w in self._workers) else (
            "no worker is left")
        if job is None:
            log.error("the worker on %s stopped (%s): %s", worker.device, _exit(code), others)
            return None
        return FileResult(job.index, job.input, job.outputs(), worker.device,
                          error=f"the worker on {worker.device} stopped ({_exit(code)}) while processing it: its "
                                f"outputs are incomplete; {others}")

    def interrupt(self) -> list[FileResult]:
        """After Ctrl-C: the files in progress stopped (outputs closed) and their results; the files not
        begun reported as such."""
        results = []
        busy = [w for w in self._workers if w.job is not None]
        for worker in busy:
            try:
                worker.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + _STOP_SECONDS
        while busy:
            ready = wait([w.conn for w in busy], timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                break
            for worker in [w for w in busy if w.conn in ready]:
                message = worker.receive()
                if message is None or message[0] == "done":
                    results.append(self._lost(worker) if message is None else message[1])
                    worker.job = None
                    busy.remove(worker)
        for worker in busy:  # never answered: its file is cut where it was
            results.append(FileResult(worker.job.index, worker.job.input, worker.job.outputs(), worker.device,
                                      error="interrupted; the worker did not close the outputs in time",
                                      interrupted=True))
            worker.process.kill()
        results.extend(not_started(job, "not started: the run was interrupted", interrupted=True) for job in self._todo)
        self._todo.clear()
        return [r for r in results if r is not None]


def _exit(code: int) -> str:
    """'exit code 1', 'exit code -9, SIGKILL'."""
    try:
        return f"exit code {code}" + (f", {signal.Signals(-code).name}" if code < 0 else "")
    except ValueError:
        return f"exit code {code}"


class _Worker(WorkerProcess):
    def __init__(self, device: str, settings: VideoSettings, level: int):
        super().__init__("rapidpose.video.files:_serve", device, ("start", device, settings, level),
                         stop_seconds=_STOP_SECONDS)
        self.job: FileJob | None = None


def _serve(fd: int) -> None:
    """A worker's life: ('start', device, settings, log level), answered ('ready', None) once the model
    is loaded (or ('failed', why)); then ('file', FileJob) one at a time, each answered with ('frames', n)
    now and then and ('done', FileResult) at its end; ('stop',) ends the file in hand (its outputs
    closed, as Ctrl-C does) and the worker."""
    import queue

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    conn = Connection(fd)
    _, device, settings, level = conn.recv()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(levelname)s: [{device}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)  # WARNING or above: no progress bars of their own either (progress.enabled)
    try:
        est = settings.estimator(device)
    except Exception as exc:  # noqa: BLE001 (a wrong model or detector: said once, by the parent)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    inbox: queue.Queue = queue.Queue()
    stopping = threading.Event()

    def listen():  # the parent's messages as they come: 'stop' must reach a file in progress
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            if message[0] == "stop":
                stopping.set()
            inbox.put(message)
            if message[0] == "stop":
                return

    threading.Thread(target=listen, name="rapidpose-video-inbox", daemon=True).start()
    while (message := inbox.get())[0] == "file":
        said = [0.0]

        def on_frame(frames):
            if stopping.is_set():
                raise KeyboardInterrupt  # process_video closes the outputs
            now = time.monotonic()
            if frames == 1 or now - said[0] > 0.5:  # at once (the parent sees frames flow), then twice a second
                said[0] = now
                try:
                    conn.send(("frames", frames))
                except OSError:  # the parent is gone: end this file as Ctrl-C would, its outputs closed
                    raise KeyboardInterrupt from None

        result = process_file(est, settings, message[1], on_frame, device)
        try:
            conn.send(("done", result))
        except OSError:  # the parent is gone (killed): nobody to tell
            return
