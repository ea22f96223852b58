"""Decoding photos off the critical path: worker processes on CPUs, nvImageCodec on GPUs.

`DecodePool` reads and decodes image files in worker processes and hands back RGB uint8 arrays in
input order, a bounded window ahead of the caller:

    with DecodePool() as pool:
        for path, image in pool.map(paths):      # image: (H, W, 3) uint8, or the file's InputError
            ...

The pixels are io.read_image's, exactly (EXIF orientation applied). A file that cannot be read comes
back as its error (an InputError naming it), in its place; nothing stops the pool, not even a file
that crashes a worker: that file is reported, the worker is replaced, the other files go on.

How the workers start: each is a fresh interpreter that imports only this module (worker_process.py
says why not multiprocessing), talking to the pool over a private socket pair. Where that cannot be
done (not POSIX; no Python executable, as in some embedded or frozen programs; workers that fail to
start) the pool decodes on threads instead, and says why once, at info level.

Why processes and not threads: cv2.imdecode releases the GIL while it decodes (threads do decode in
parallel), but the Python around each image (reading, converting, orienting, bookkeeping) holds it,
and so does the caller's own Python; in worker processes decoding costs the caller about a tenth of
the CPU and little of its GIL. On a 2-core machine, 100 COCO photos, threads decoded faster when the
caller did nothing else (0.8 against 1.1 ms a photo) but cost a caller busy with 3 ms of Python a photo
1.4 ms a photo more, processes 0.9 (and 0.25 ms of the caller's CPU a photo against 1.7-2.3).
Images come back as a pickled header and then the raw pixels, read with os.readv straight into the
array: 0.06 ms of the caller's CPU for a 640x480 image, against 0.56 pickled and 0.83 through
Connection.recv_bytes_into (which copies twice).

`GpuJpegDecoder` decodes JPEGs on a CUDA device with nvImageCodec (extra `gpu-decode`) into RGB uint8
tensors on that device, EXIF orientation applied; every other file, and every machine without
nvImageCodec or a GPU, goes through a DecodePool (the reason said once, at info level).
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait

import numpy as np

from rapidpose.errors import InputError, RapidPoseError
from rapidpose.io import chunked, decode_image, image_bytes, read_image

log = logging.getLogger("rapidpose")

_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def default_workers() -> int:
    """The CPUs this process may use, at most 8 (past that, decoding outruns what a pipeline eats)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _decode(name: str, data) -> np.ndarray | RapidPoseError:
    """One file (`data` None: read from the path `name`) -> its image, or the error that names it."""
    try:
        return read_image(name) if data is None else decode_image(data, name)
    except RapidPoseError as exc:
        return exc
    except Exception as exc:  # an OpenCV error, memory, ...: this file's problem, not the run's
        return InputError(f"'{name}' could not be decoded ({type(exc).__name__}: {exc})")


class DecodePool:
    """Image files decoded by worker processes (see the module's docstring), in input order.

    workers: decoding processes (default: the usable CPUs, at most 8). window: how many files are in
    flight at once (sent, decoding, or decoded and waiting to be taken): the read-ahead, and the bound
    on memory (window x the largest image). Workers start at the first map and live until close()
    (or the end of a `with` block, or the pool being dropped, or the interpreter's exit).
    processes=False decodes on threads in this process instead.
    """

    def __init__(self, workers: int | None = None, window: int = 32, processes: bool = True):
        if workers is not None and workers < 1:
            raise InputError(f"workers={workers}: a decode pool needs at least one worker")
        self.workers = workers or default_workers()
        self.window = max(int(window), 1)
        self.processes = processes
        self._backend: _Backend | None = None
        self._finalizer = None

    def map(self, paths):
        """(path, image or error) for each path, in order: image is RGB uint8 (H, W, 3), exactly
        io.read_image(path); error is the InputError (a RapidPoseError) that says what is wrong with
        the file. `paths` may be any iterable (a generator too): it is read only a window ahead."""
        return self._run((path, os.fspath(path), None) for path in paths)

    def map_data(self, items):
        """(name, image or error) for each (name, bytes of an image file), in order, as io.decode_image
        decodes them (bytes held in memory, fetched from a network, ...)."""
        return self._run((name, str(name), bytes(data)) for name, data in items)

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        """One image file's bytes decoded by a worker, waiting for it: io.decode_image's pixels, or its
        InputError raised. For callers that have threads of their own (a server's requests): decoding
        then costs this process the copy of the pixels, not the decode and its Python under the GIL."""
        backend = self._started()
        image = backend.result(backend.submit(str(name), bytes(data)))
        if isinstance(image, RapidPoseError):
            raise image
        return image

    def _run(self, items):
        backend = self._started()
        window = self.window
        pending = deque()
        items = iter(items)
        try:
            for key, name, data in items:
                pending.append((key, backend.submit(name, data)))
                if len(pending) >= window:
                    break
            while pending:
                key, seq = pending.popleft()
                for key_next, name, data in itertools.islice(items, 1):  # keep the window full
                    pending.append((key_next, backend.submit(name, data)))
                yield key, backend.result(seq)
        finally:  # abandoned half-way (break, an exception): forget what is still in flight
            for _, seq in pending:
                backend.drop(seq)

    def _started(self) -> _Backend:
        if self._backend is None or self._backend.closed:
            self._backend = _Backend(self.workers, self.processes)
            self._finalizer = weakref.finalize(self, self._backend.close)
        return self._backend

    @property
    def on_threads(self) -> str | None:
        """Why files are decoded on threads rather than worker processes (None: on processes, or
        not started yet)."""
        backend = self._backend
        if backend is None:
            return None if self.processes else "processes=False"
        return backend.on_threads

    def pids(self) -> list[int]:
        """The process ids of the decoding workers now running."""
        return self._backend.pids() if self._backend is not None else []

    def close(self) -> None:
        """Stop the workers (a later map starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Worker:
    def __init__(self, process: subprocess.Popen, conn: Connection):
        self.process = process
        self.conn = conn
        self.pending: deque = deque()  # (seq, name, data) sent and not yet answered, in order
        self.ready = False  # said hello: imports done, so a later death is a file's doing
        self.dead = False


_SOCKET_BUFFER = 4 << 20  # room for a few images: a worker goes on decoding while its last image waits to be read


class _Backend:
    """The workers of one pool and the thread that collects their answers; threads where there can
    be no workers. Each request has a sequence number; answers are kept by number until taken."""

    def __init__(self, count: int, processes: bool):
        self.count = count
        self.closed = False
        self.on_threads = None if processes else "processes=False"
        self._seq = itertools.count()
        self._lock = threading.Condition()
        self._send_lock = threading.Lock()
        self._results: dict[int, object] = {}
        self._dropped: set[int] = set()
        self._orphans: dict[int, tuple] = {}  # requests whose worker stopped before starting them
        self._futures: dict = {}  # requests decoded on threads
        self._threads: ThreadPoolExecutor | None = None
        self._workers: list[_Worker] = []
        self._retired: list[_Worker] = []  # stopped by the pool, reaped at close
        self._collector = None
        if processes:
            self._start_processes()

    # -- processes ---------------------------------------------------------------------------------
    def _start_processes(self) -> None:
        why = None
        if os.name != "posix":
            why = f"worker processes are started only on POSIX systems (this is {os.name})"
        elif not sys.executable:
            why = "this Python has no executable to start worker processes with (an embedded interpreter?)"
        if why is None:
            try:
                for _ in range(self.count):
                    self._workers.append(self._launch())
            except Exception as exc:  # no such file, no more processes, ...
                why = f"worker processes could not be started ({type(exc).__name__}: {exc})"
                for worker in self._workers:
                    worker.process.kill()
                self._retired.extend(self._workers)
                self._workers = []
        if why is not None:
            self._fall_back(why)
            return
        self._wake_r, self._wake_w = socket.socketpair()
        self._collector = threading.Thread(target=self._collect, name="rapidpose-decode-collector", daemon=True)
        self._collector.start()

    def _launch(self) -> _Worker:
        from rapidpose.worker_process import spawn

        return _Worker(*spawn("rapidpose.photos.decode:_serve", _SOCKET_BUFFER))

    def _fall_back(self, why: str) -> None:
        self.on_threads = why
        _say_once(f"photos are decoded on threads, not worker processes: {why}")

    def _collect(self) -> None:
        try:
            while True:
                with self._lock:
                    if self.closed:
                        return
                    conns = {worker.conn: worker for worker in self._workers}
                for conn in wait([*conns, self._wake_r]):
                    if conn is self._wake_r:
                        self._wake_r.recv(64)
                        continue
                    worker = conns[conn]
                    if worker.dead:  # given up on earlier in this round (see _abandon_workers)
                        continue
                    try:
                        self._receive(worker)
                    except (EOFError, OSError):
                        self._lost(worker)
        except BaseException as exc:  # never leave a caller waiting on answers that cannot come
            with self._lock:
                if not self.closed:
                    self._abandon_workers(f"the decoding collector stopped ({type(exc).__name__}: {exc})")
            raise

    def _receive(self, worker: _Worker) -> None:
        message = worker.conn.recv()
        if message[0] == "ready":
            worker.ready = True
            return
        seq, result = message[0], message[1]
        if isinstance(result, str):  # "image": the pixels follow, raw, read straight into the array
            result = np.empty(message[2], message[3])
            _read_exactly(worker.conn.fileno(), memoryview(result).cast("B"))
        with self._lock:
            worker.pending.popleft()
            if seq in self._dropped:
                self._dropped.discard(seq)
            else:
                self._results[seq] = result
            self._lock.notify_all()

    def _lost(self, worker: _Worker) -> None:
        """A worker's socket closed: it crashed on the file it was decoding, or never started."""
        try:
            code = worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            code = worker.process.wait()
        worker.conn.close()
        with self._lock:
            worker.dead = True
            if worker in self._workers:
                self._workers.remove(worker)
            if self.closed:
                return
            pending = list(worker.pending)
            worker.pending.clear()
            if worker.ready and pending:  # it was decoding the first of these when it stopped
                seq, name, _ = pending.pop(0)
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                error = InputError(f"'{name}' stopped the process decoding it ({how}): the file is probably "
                                   f"corrupt or made to crash decoders; it was skipped")
                if seq in self._dropped:
                    self._dropped.discard(seq)
                else:
                    self._results[seq] = error
            for seq, name, data in pending:
                self._orphans[seq] = (name, data)
            if not worker.ready:
                self._abandon_workers(f"a decoding worker process stopped before it was ready (exit code "
                                      f"{code}; its error, if any, is on stderr)")
            self._lock.notify_all()
        if worker.ready:  # a file's doing: replace the worker
            try:
                replacement = self._launch()
            except OSError as exc:
                with self._lock:
                    self._abandon_workers(f"a decoding worker could not be restarted ({exc})")
                    self._lock.notify_all()
                return
            with self._lock:
                if self.closed:
                    replacement.process.kill()
                    replacement.conn.close()
                    return
                self._workers.append(replacement)

    def _abandon_workers(self, why: str) -> None:
        """(lock held) Decode on threads from now on: every request in a worker's hands becomes an
        orphan, resubmitted by the next caller that waits for an answer."""
        if self.on_threads is None:
            self._fall_back(why)
        for worker in self._workers:
            worker.dead = True
            for seq, name, data in worker.pending:
                self._orphans[seq] = (name, data)
            worker.pending.clear()
            worker.process.kill()
        self._retired.extend(self._workers)
        self._workers = []
        self._lock.notify_all()

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, name: str, data) -> int:
        seq = next(self._seq)
        self._send(seq, name, data)
        return seq

    def _send(self, seq: int, name: str, data) -> None:
        with self._send_lock:
            with self._lock:
                alive = [worker for worker in self._workers if not worker.dead]
                if not alive:
                    worker = None
                else:
                    worker = min(alive, key=lambda w: len(w.pending))
                    worker.pending.append((seq, name, data))
            if worker is None:
                self._on_thread(seq, name, data)
                return
            try:
                worker.conn.send((seq, name, data))
            except OSError:
                pass  # it died meanwhile: the collector finds the request in its pending ones

    def _on_thread(self, seq: int, name: str, data) -> None:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.count, thread_name_prefix="rapidpose-decode")
        self._futures[seq] = self._threads.submit(_decode, name, data)

    def result(self, seq: int):
        while True:
            future = self._futures.pop(seq, None)
            if future is not None:
                return future.result()
            with self._lock:
                orphans, self._orphans = self._orphans, {}
                if not orphans:
                    if seq in self._results:
                        return self._results.pop(seq)
                    if self.closed:
                        raise RuntimeError("the decode pool was closed while a map over it was still running")
                    self._lock.wait(timeout=1.0)
                    continue
            for orphan, (name, data) in sorted(orphans.items()):
                self._send(orphan, name, data)

    def drop(self, seq: int) -> None:
        future = self._futures.pop(seq, None)
        if future is not None:
            future.cancel()
            return
        with self._lock:
            if self._results.pop(seq, None) is None:
                if self._orphans.pop(seq, None) is None:
                    self._dropped.add(seq)

    def pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self._workers if not worker.dead]

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            workers, self._workers = self._workers + self._retired, []
            self._lock.notify_all()
        if self._collector is not None:
            self._wake_w.send(b"x")
            self._collector.join(timeout=10)
            self._wake_r.close()
            self._wake_w.close()
        for worker in workers:  # end of requests: a worker stops at once, or when its file is done
            worker.conn.close()
        for worker in workers:
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


def _read_exactly(fd: int, view: memoryview) -> None:
    while view:
        got = os.readv(fd, [view])
        if not got:
            raise EOFError("the decoding worker stopped in the middle of an image")
        view = view[got:]


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _serve(fd: int) -> None:
    """A decoding worker's life: requests (seq, name, bytes or None) in, answers out, in order.

    A reader thread keeps taking requests, so the pool's sends never wait on a decode; answers go back
    one at a time, an image as a header and then its raw pixels."""
    import signal

    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pool
    cv2.setNumThreads(1)  # one core per worker; the pool has as many workers as cores
    conn = Connection(fd)
    requests: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            while (request := conn.recv()) is not None:
                requests.put(request)
        except (EOFError, OSError):
            pass
        requests.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        conn.send(("ready", os.getpid()))
        while (request := requests.get()) is not None:
            seq, name, data = request
            result = _decode(name, data)
            if isinstance(result, np.ndarray):  # a header, then the pixels raw (no pickling, no copy)
                conn.send((seq, "image", result.shape, result.dtype.str))
                _write_all(fd, memoryview(np.ascontiguousarray(result)).cast("B"))
            else:
                conn.send((seq, result))
    except OSError:  # the pool closed its end: nobody wants the answers any more
        pass


# -- GPU ---------------------------------------------------------------------------------------------
def _read_bytes(path):
    try:
        return image_bytes(path)
    except RapidPoseError as exc:
        return exc


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def gpu_decoding_unavailable(device) -> str | None:
    """Why JPEGs cannot be decoded on `device` (a torch device), or None when they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    device = torch.device(device)
    if device.type != "cuda":
        return f"the device is {device}, not a CUDA device"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        importlib.import_module("nvidia.nvimgcodec")  # (through sys.modules: tests hide it there)
    except ImportError:
        cuda = (torch.version.cuda or "").split(".")[0]
        install = (f"pip install 'nvidia-nvimgcodec-cu{cuda}[nvjpeg]'" if cuda and cuda != "13" else
                   "pip install 'rapidpose[gpu-decode]'")
        return f"nvImageCodec is not installed: {install}"
    return None


class GpuJpegDecoder:
    """JPEG files decoded on a CUDA device by nvImageCodec (nvJPEG; the GPU's hardware JPEG decoder
    where it has one) into RGB uint8 tensors (H, W, 3) on that device, EXIF orientation applied.

    Files that are not JPEGs, JPEGs that the GPU cannot decode (CMYK, some progressive ones: nvImageCodec
    answers None for them) and every file on a machine without nvImageCodec or a CUDA device are
    decoded by a DecodePool on the CPUs (io.read_image's pixels) and moved to the device (or, without
    one, returned as CPU tensors). `reason` says why JPEGs are not decoded on the GPU (None: they are);
    it is logged once, at info level.

    The GPU's pixels are not bit-identical to the CPU's: nvJPEG's inverse DCT and chroma upsampling
    round differently from libjpeg-turbo's (a level or two here and there).
    """

    def __init__(self, device="cuda", pool: DecodePool | None = None, workers: int | None = None,
                 window: int = 32):
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pool = pool if pool is not None else DecodePool(workers, window)
        self.decoded_on_gpu = 0  # files decoded by nvImageCodec so far (the rest went to the pool)
        self._decoder = self._params = None
        self.reason = gpu_decoding_unavailable(self.device)
        if self.reason is None:
            self.reason = self._open()
        if self.reason is not None:
            _say_once(f"JPEG photos are decoded on the CPU, not on the GPU: {self.reason}")
            if self.device.type == "cuda" and not torch.cuda.is_available():
                self.device = torch.device("cpu")

    def _open(self) -> str | None:
        """Make the decoder and check that it decodes a JPEG on the GPU (None) or say why not."""
        import cv2
        import torch
        from nvidia import nvimgcodec

        try:
            kinds = [nvimgcodec.BackendKind.HW_GPU_ONLY, nvimgcodec.BackendKind.GPU_ONLY,
                     nvimgcodec.BackendKind.HYBRID_CPU_GPU]  # outputs on the GPU; anything else: the pool
            # fancy upsampling is libjpeg-turbo's (OpenCV's) default; nvImageCodec turns it off unless asked
            self._decoder = nvimgcodec.Decoder(device_id=self.device.index, options=":fancy_upsampling=1",
                                               backends=[nvimgcodec.Backend(kind) for kind in kinds])
            # sRGB output is the default colour spec (its name changed in 0.7), 8 bits without allow_any_depth
            self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True, allow_any_depth=False)
            probe = np.zeros((16, 16, 3), np.uint8)
            probe[4:12, 4:12] = (200, 40, 90)
            image = self._decoder.decode(cv2.imencode(".jpg", probe)[1].tobytes(), params=self._params,
                                         cuda_stream=torch.cuda.current_stream(self.device).cuda_stream)
        except Exception as exc:  # no nvJPEG library, a driver too old, ...
            self._decoder = None
            return f"nvImageCodec could not make a GPU JPEG decoder ({type(exc).__name__}: {exc})"
        if image is None:
            self._decoder = None
            return ("nvImageCodec has no GPU JPEG decoder here (is nvJPEG installed? pip install "
                    "'rapidpose[gpu-decode]')")
        return None

    def decode(self, data: list[bytes], names=None) -> list:
        """Images (torch uint8 tensors (H, W, 3) RGB on the device) or errors (RapidPoseError naming
        the file), one per file's bytes, in order; `names` (default 'image 0', 'image 1', ...) are
        what errors call the files."""
        import torch

        names = [str(n) for n in names] if names is not None else [f"image {i}" for i in range(len(data))]
        out: list = [None] * len(data)
        if self._decoder is not None:
            from nvidia import nvimgcodec

            batch, streams = [], []
            for i, blob in enumerate(data):
                if _is_jpeg(blob):
                    try:
                        streams.append(nvimgcodec.CodeStream(blob))  # parses the header: may refuse the file
                        batch.append(i)
                    except Exception:
                        pass  # the CPU decoder says what is wrong with it
            if batch:
                stream = torch.cuda.current_stream(self.device)
                try:
                    with torch.cuda.device(self.device):
                        images = self._decoder.decode(streams, params=self._params, cuda_stream=stream.cuda_stream)
                except Exception as exc:
                    log.debug("nvImageCodec failed on %d JPEGs (%s): decoding them on the CPU", len(batch), exc)
                    images = [None] * len(batch)
                for i, image in zip(batch, images):
                    if image is not None:
                        out[i] = _rgb_tensor(torch.from_dlpack(image))
                        self.decoded_on_gpu += 1
        rest = [i for i, image in enumerate(out) if image is None]
        if rest:
            decoded = self.pool.map_data((names[i], data[i]) for i in rest)
            for i, (_, image) in zip(rest, decoded):
                out[i] = image if isinstance(image, RapidPoseError) else torch.from_numpy(image).to(self.device)
        return out

    def map(self, paths, batch_size: int = 32, readers: int = 4):
        """(path, image or error) for each path, in order, images as in decode(): files are read on
        `readers` threads and decoded `batch_size` at a time by a thread of its own (on a CUDA stream
        of its own), a batch ahead of the caller, whose stream then waits for that batch only."""
        import torch

        on_cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if on_cuda else None

        def read_and_decode(chunk, reads):
            out = [read.result() for read in reads]
            good = [i for i, blob in enumerate(out) if not isinstance(blob, RapidPoseError)]
            with torch.cuda.stream(stream) if on_cuda else contextlib.nullcontext():
                for i, image in zip(good, self.decode([out[i] for i in good], [chunk[i] for i in good])):
                    out[i] = image
                done = None
                if on_cuda:
                    done = torch.cuda.Event()
                    done.record(stream)
            return chunk, out, done

        with ThreadPoolExecutor(readers, thread_name_prefix="rapidpose-read") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="rapidpose-jpeg") as decoder:
            chunks = chunked(paths, max(int(batch_size), 1))
            ahead = deque()

            def read_next():
                for chunk in itertools.islice(chunks, 1):
                    reads = [pool.submit(_read_bytes, path) for path in chunk]
                    ahead.append(decoder.submit(read_and_decode, chunk, reads))

            read_next()
            read_next()
            try:
                while ahead:
                    read_next()
                    chunk, out, done = ahead.popleft().result()
                    if done is not None:
                        user = torch.cuda.current_stream(self.device)
                        user.wait_event(done)  # the caller's work on these images waits for their decoding
                        for image in out:
                            if torch.is_tensor(image):
                                image.record_stream(user)  # (the pool's uploads: torch's memory)
                    yield from zip(chunk, out)
            finally:
                for future in ahead:
                    future.cancel()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _rgb_tensor(image):
    """nvImageCodec's image as a torch tensor (H, W, 3) uint8 (gray or RGBA made RGB, as as_rgb)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = image.expand(-1, -1, 3)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image.contiguous()
