"""Worker processes: a fresh Python interpreter that runs one function of rapidpose, talking to its
parent over a private socket pair.

    process, conn = spawn("rapidpose.photos.decode:_serve")     # _serve(fd) runs in the child

Why not multiprocessing: its fork is unsafe once a process has threads (torch, OpenMP, ONNX Runtime and
CUDA all start some, and a forked child can deadlock on a lock one of them held), and its spawn and
forkserver methods import the parent's main module again in every child (a script without an
`if __name__ == "__main__":` guard runs again; a main module that cannot be imported kills every
worker). The child gets the parent's sys.path and imports only the module it runs.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

_BOOT = ("import sys, json, importlib; sys.path[:] = json.loads(sys.argv[1]); "
         "module, function = sys.argv[3].split(':'); getattr(importlib.import_module(module), function)(int(sys.argv[2]))")


def spawn(target: str, buffer_bytes: int | None = None) -> tuple[subprocess.Popen, Connection]:
    """Start `target` ('package.module:function', called with the child's end of the socket pair as a
    file descriptor); the process and the parent's end. buffer_bytes: room in the socket each way (a
    worker that answers with images goes on working while its last answer waits to be read)."""
    ours, theirs = socket.socketpair()
    if buffer_bytes:
        for end, option in ((theirs, socket.SO_SNDBUF), (ours, socket.SO_RCVBUF)):
            try:
                end.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
            except OSError:
                pass  # the system's limit (net.core.wmem_max) stands
    try:
        path = json.dumps([entry for entry in sys.path if isinstance(entry, str)])
        process = subprocess.Popen([sys.executable, "-c", _BOOT, path, str(theirs.fileno()), target],
                                   pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Connection(ours.detach())


class WorkerProcess:
    """A worker on a device (spawn's), sent `first` at once: messages in and out, and a stop that asks
    first and kills only after `stop_seconds`."""

    def __init__(self, target: str, device: str, first, stop_seconds: float = 30):
        self.device, self.stop_seconds = device, stop_seconds
        self.process, self.conn = spawn(target)
        self.alive = True
        self._lock = threading.Lock()
        self.send(first)

    def send(self, message) -> None:
        with self._lock:
            self.conn.send(message)

    def receive(self):
        """The next message, or None once the worker is gone."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def stop(self) -> None:
        if self.alive:
            try:
                self.send(("stop",))
            except OSError:
                pass
        try:
            self.process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.alive = False
        self.conn.close()


class WorkerGroup:
    """Worker processes (`self._workers`, WorkerProcess each) stopped together: at close, and on
    leaving a with block."""

    _workers: list

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
