"""The HTTP app of `rapidpose serve`: FastAPI routes in front of a dynamic batcher.

Why FastAPI + uvicorn with a batcher of our own (batcher.py), rather than LitServe or Ray Serve:
- control of every answer: each fault a client can cause gets its own status (400/413/415/422) and a
  JSON message saying what was wrong; a full queue gets 503 with Retry-After at once, before its body
  is even read; LitServe and Ray Serve answer these in their own ways, partly outside the app's reach;
- dynamic batching across clients is 100 lines here (a bounded queue, worker threads that gather up to
  --max-batch-size requests or --max-wait-ms), with the model in the server's process: a batch's
  decoded images are not copied to other processes (LitServe pickles them to worker processes; Ray
  Serve to replica actors);
- Prometheus metrics with prometheus_client, in a registry of the app's own (metrics.py);
- a light install (fastapi, uvicorn, python-multipart, prometheus-client: pure Python but uvicorn's
  optional speed-ups; Ray is a few hundred MB and starts a cluster) and a server that starts in a
  second and runs in-process in the tests.

Endpoints:
- POST /predict: an image as the raw body (an image/* Content-Type, application/octet-stream, or none)
  or as the file field 'image' of a multipart form; optional boxes, the query parameter or form field
  'boxes': JSON [[x1, y1, x2, y2(, score)], ...] in image pixels, used in place of the detector. The
  answer is the entry `rapidpose predict --json` has for an image (one line of --jsonl):
  {"image": <the form file's name, else "upload">, "width", "height", "people": [{"box", "box_score",
  "keypoints": [[x, y, score], ...]}]}. The keypoints' names and the skeleton are the same for every
  answer, so they are not repeated there: GET /info has them.
- GET /info: the header keys of `predict --json` ("model", "name", "keypoint_names", "skeleton") and
  "server": the batching settings and the workers' devices.
- GET /health: 200 {"status": "ok"} while the model is loaded and every worker runs; 503 when not
  (shutting down).
- GET /metrics: Prometheus text format (metrics.py).
Errors are {"error": "<what was wrong and what to do>"}: 400, 415, 422 (parsing.py; an image that does
not decode is 422), 413 (limits.py), 503 + Retry-After (queue full), 500 (the model raised on this
request's batch: the other batches, and the server, go on).
"""
from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from rapidpose.errors import InputError
from rapidpose.io import decode_image
from rapidpose.serve.batcher import Batcher, BatchFailed, QueueFull
from rapidpose.serve.limits import BodyLimit
from rapidpose.serve.metrics import CountAnswers, Metrics
from rapidpose.serve.parsing import RequestError, check_boxes_inside, read_request
from rapidpose.serve.pose import Upload

log = logging.getLogger("rapidpose")

RETRY_AFTER_S = 1  # a batch takes well under a second on most machines: the queue has moved on by then

_BODY = {"content": {  # the request body, for the OpenAPI page (/docs): parsing.py reads it itself
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"},
        "boxes": {"type": "string", "description": "JSON [[x1, y1, x2, y2(, score)], ...]"}}}}}}


def make_app(batcher: Batcher, info: dict, max_body_bytes: int = 20 * 2**20, decode=decode_image) -> FastAPI:
    """The app: `batcher` runs the model (its runners take lists of pose.Upload and give photo records);
    `info` is what GET /info shows (pose.header's keys and a "server" dict); `decode(bytes, name)` makes an
    upload an RGB image (io.decode_image on the server's threads, or photos.decode.DecodePool.decode in
    worker processes). The batcher's workers start with the app and stop with it, after the requests
    still queued are answered."""
    metrics = Metrics(lambda: batcher.depth)
    batcher.on_batch = metrics.batch

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)  # uvicorn has answered the requests in hand by now
        log.info("stopped")

    app = FastAPI(title="rapidpose", summary="ViTPose keypoints of the people in an image", lifespan=lifespan,
                  middleware=[Middleware(CountAnswers, metrics=metrics), Middleware(BodyLimit, max_bytes=max_body_bytes)])

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404, 405: the same {"error"} shape as ours
        return _error(exc.status_code, str(exc.detail))

    @app.post("/predict", openapi_extra={"requestBody": _BODY})
    async def predict(request: Request):
        """The people in one image: the entry `rapidpose predict --json` has for it."""
        if batcher.full:  # before reading the body: an overloaded server spends nothing on it
            return _busy(batcher)
        try:
            received = await read_request(request)
            image = await run_in_threadpool(decode, received.data, received.name)
            check_boxes_inside(received.boxes, image.shape[1], image.shape[0])
            return JSONResponse(await batcher.submit(Upload(image, received.name, received.boxes)))
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except InputError as exc:  # the bytes are not an image
            return _error(422, str(exc))
        except QueueFull:
            return _busy(batcher)
        except BatchFailed as exc:
            return _error(500, f"the model failed on the batch of requests this image was in ({exc}); the server "
                               f"goes on: send the image again, and if it fails again, report the error")

    @app.get("/info")
    async def get_info():
        """The model, its keypoint names and skeleton, and the server's batching settings."""
        return info

    @app.get("/health")
    async def health():
        """200 while the model is loaded and every worker runs."""
        if batcher.alive:
            return {"status": "ok", "workers": batcher.workers}
        return _error(503, "the server is not running its workers (starting or shutting down)")

    @app.get("/metrics")
    async def get_metrics():
        """Prometheus text format."""
        body, kind = metrics.render()
        return Response(body, media_type=kind)

    return app


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _busy(batcher: Batcher) -> JSONResponse:
    why = (f"is busy: {batcher.queue_size} requests are waiting already (--queue-size)" if batcher.alive
           else "is shutting down")
    return _error(503, f"the server {why}: try again in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
