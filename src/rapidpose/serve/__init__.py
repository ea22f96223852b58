"""The HTTP server of `rapidpose serve`: POST an image, get its people's keypoints; requests of all
clients batched into shared model calls (extra `serve`: pip install 'rapidpose[serve]').

    from rapidpose.serve import Batcher, header, make_app, predict_uploads
    est = rapidpose.PoseEstimator("vitpose-b", detector="rtmdet-nano")
    batcher = Batcher([functools.partial(predict_uploads, est)], max_batch_size=64, max_wait=0.005)
    app = make_app(batcher, {**header(est, "vitpose-b"), "server": {...}})   # any ASGI server runs it

app.py (the endpoints, and why FastAPI), batcher.py (dynamic batching), pose.py (a batch through the
estimator), parsing.py (what a request carries), limits.py (413), metrics.py (Prometheus),
server.py (uvicorn, graceful shutdown).
"""
from rapidpose.errors import require

for _module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
    require(_module, "serve")  # one message naming the extra, before an ImportError from deep inside

from rapidpose.serve.app import make_app  # noqa: E402
from rapidpose.serve.batcher import BatchFailed, Batcher, QueueFull  # noqa: E402
from rapidpose.serve.pose import Upload, header, predict_uploads, warm_up  # noqa: E402
from rapidpose.serve.server import bind, make_server, serve, url_of  # noqa: E402

__all__ = ["make_app", "Batcher", "BatchFailed", "QueueFull", "Upload", "header", "predict_uploads", "warm_up",
           "bind", "make_server", "serve", "url_of"]
