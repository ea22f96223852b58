"""The request body limit: 413 for a body over `max_bytes`, whether its Content-Length says so up front
(answered before any of it is read) or a chunked body grows past it (answered as it does), so the route
never holds more than the limit in memory. Uvicorn reads and drops the rest of the body after the answer
and keeps the connection: the client gets its 413, not a reset."""
from __future__ import annotations

import json


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: HTTP requests with bodies over `max_bytes` get 413 and a JSON message."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, f"{int(declared):,} bytes")
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:  # cannot happen with these routes (they read the whole body first): let it be a 500
                raise
            await self._refuse(send, f"more than {self.max_bytes:,} bytes")

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps({"error": f"the request body ({size}) is over this server's limit of "
                                    f"{self.max_bytes / 2**20:g} MB (--max-body-mb): send a smaller image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
