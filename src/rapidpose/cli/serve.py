"""`rapidpose serve`: an HTTP server; the requests of all clients share model calls (dynamic batching).

The model loads (and runs once) before the server listens, so a wrong model, detector or a port in use
stops the command with exit 2 before any client is accepted. What the endpoints take and answer:
rapidpose.serve.app.
"""
from __future__ import annotations

import functools
import logging

from rapidpose.cli.options import COUNT, FRACTION, add_network_options, number
from rapidpose.errors import InputError
from rapidpose.skeletons import SKELETONS

log = logging.getLogger("rapidpose")

RANDOM = {"random-s": "s", "random-b": "b", "random-l": "l", "random-h": "h"}


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP server: POST an image, get the keypoints of its people",
                       description="Serve pose estimation over HTTP. POST /predict takes an image (the raw body "
                                   "with an image Content-Type, or the file field 'image' of a multipart form) "
                                   "and optional boxes (query or form field 'boxes': JSON [[x1, y1, x2, y2(, "
                                   "score)], ...]) and answers the entry `predict --json` has for an image; GET "
                                   "/info has the model, keypoint names and skeleton, GET /health and GET /metrics "
                                   "(Prometheus) the server's state. Requests arriving together, from any clients, "
                                   "share one model call (up to --max-batch-size images). Ctrl-C or SIGTERM "
                                   "stops it after answering the requests in hand.")
    add_network_options(p, model_help="hub name, checkpoint path, .onnx/.xml export, or random-s|b|l|h: RANDOM "
                                      "weights whose keypoints mean nothing, for load tests only")
    p.add_argument("--detector", default="rtmdet-nano",
                   help="rtmdet-nano, yolox-nano, an .onnx path, or 'none' (the whole image, when a request has "
                        "no boxes) (default rtmdet-nano)")
    p.add_argument("--threshold", type=FRACTION, default=0.3, metavar="SCORE",
                   help="minimum person box score of the detector, 0 to 1; boxes a request gives are used as "
                        "they are (default 0.3)")
    p.add_argument("--keypoint-set", choices=sorted(SKELETONS),
                   help="keypoint set of an .onnx/.xml model without rapidpose metadata (default: the model's)")
    p.add_argument("--batch-size", type=COUNT, default=64, metavar="N",
                   help="crops (people) per network batch (default 64)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000,
                   help="port to listen on; 0 takes a free one, printed at the start (default 8000)")
    p.add_argument("--max-batch-size", type=COUNT, default=64, metavar="N",
                   help="images per model call at most: requests of all clients that arrive together share "
                        "one call (default 64)")
    p.add_argument("--max-wait-ms", type=number(float, 0), default=5.0, metavar="MS",
                   help="how long a batch waits for more requests after its first one; under load batches "
                        "fill while the model is busy, without waiting (default 5)")
    p.add_argument("--workers-per-device", type=COUNT, default=1, metavar="N",
                   help="copies of the model on each device, each on a worker thread of its own; --device may "
                        "list several devices, comma-separated (cuda:0,cuda:1) (default 1)")
    p.add_argument("--queue-size", type=COUNT, default=256, metavar="N",
                   help="requests that may wait for a worker; more get 503 with Retry-After at once (default 256)")
    p.add_argument("--max-body-mb", type=number(float, 0.01), default=20.0, metavar="MB",
                   help="largest request body in MB (2^20 bytes); larger ones get 413 (default 20)")
    p.add_argument("--decode-processes", type=number(int, 0), default=None, metavar="N",
                   help="processes that decode the uploads, 0: the server's own threads (default: up to 8, as "
                        "many as the cores, where the model runs on a GPU, whose rate one process's decoding "
                        "cannot feed; 0 on CPUs, whose cores the model needs)")


def run_serve(args) -> int:
    from rapidpose.serve import Batcher, bind, header, make_app, predict_uploads, serve, url_of

    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    if not devices:
        raise InputError(f"--device '{args.device}' names no device: use cpu, cuda, cuda:N, auto, or a "
                         f"comma-separated list (cuda:0,cuda:1)")
    sock = bind(args.host, args.port)  # before the model loads: a port in use fails at once
    if args.model in RANDOM:
        log.warning("--model %s: RANDOM weights, the keypoints mean nothing (for load tests and benchmarks only)",
                    args.model)
    try:
        estimators = [_estimator(args, device) for device in devices for _ in range(args.workers_per_device)]
    except BaseException:
        sock.close()
        raise
    batcher = Batcher([functools.partial(predict_uploads, est) for est in estimators], args.max_batch_size,
                      args.max_wait_ms / 1000, args.queue_size)
    workers = [_device_of(est) for est in estimators]
    info = {**header(estimators[0], args.model),
            "server": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                       "queue_size": args.queue_size, "max_body_mb": args.max_body_mb, "workers": workers,
                       "detector": args.detector}}
    pool = _decode_pool(args.decode_processes, any(w.startswith("cuda") for w in workers))
    info["server"]["decode_processes"] = pool.workers if pool is not None else 0
    app = make_app(batcher, info, max_body_bytes=int(args.max_body_mb * 2**20),
                   **({"decode": pool.decode} if pool is not None else {}))
    url = url_of(sock)
    log.info("serving %s on %s (%d worker%s: %s): POST %s/predict; GET /info, /health, /metrics; Ctrl-C stops",
             args.model, url, len(workers), "" if len(workers) == 1 else "s", ", ".join(workers), url)
    try:
        serve(app, sock)
    finally:
        if pool is not None:
            pool.close()
    return 0


def _decode_pool(processes: int | None, on_gpu: bool):
    """The uploads' decoding processes (photos.decode.DecodePool), or None: the server's threads."""
    from rapidpose.photos.decode import DecodePool, default_workers

    count = (default_workers() if on_gpu else 0) if processes is None else processes
    return DecodePool(workers=count) if count else None


def _estimator(args, device: str):
    """One worker's estimator, run once (warm_up) so that the first client does not wait for set-up."""
    from rapidpose.evaluate.speed import random_model
    from rapidpose.serve import warm_up
    from rapidpose.topdown.estimator import PoseEstimator

    model = args.model
    if model in RANDOM:
        model = random_model(RANDOM[model])  # a module of its own for each worker
    est = PoseEstimator(model, detector=args.detector, device=device, flip_test=args.flip,
                        detector_threshold=args.threshold, batch_size=args.batch_size,
                        dataset_index=args.dataset_index, backend=args.backend, precision=args.precision,
                        compile=args.compile, keypoint_set=args.keypoint_set)
    warm_up(est)
    return est


def _device_of(est) -> str:
    return str(getattr(est.runtime, "device", "cpu"))
