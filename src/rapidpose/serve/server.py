"""Running the app under uvicorn: the socket bound first (a port in use fails before a model loads;
port 0 takes a free one), then served until SIGINT or SIGTERM, which end it gracefully: no new
connections, the requests in hand answered (for up to GRACE_S), the workers stopped."""
from __future__ import annotations

import socket

from rapidpose.errors import InputError

GRACE_S = 30


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening: uvicorn does that)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host '{host}' is not an address this machine can listen on ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host} port {port} ({exc.strerror}): pick another --port (0: any free "
                         f"one) or --host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app):
    """A uvicorn server for `app`; its messages go through logging (the command's -q/-v), no access log."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=GRACE_S))


def serve(app, sock: socket.socket) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (see the module). Uvicorn then raises the signal
    again, so that the process ends as the signal asks (Ctrl-C: KeyboardInterrupt)."""
    make_server(app).run(sockets=[sock])
