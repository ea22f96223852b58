"""`rapidpose serve` under load: concurrent clients POST photos, at several client counts, beside the
offline `predict` rate on the same photos. Random weights (`--model random-s`, the default) are for
speed only: the keypoints mean nothing, and the detector still finds the real people in the photos.

The server is started as a user starts it (`python -m rapidpose serve ... --port 0`, a process of its
own, on loopback) unless --url names one that runs already. Each round sends --requests photos (raw JPEG
bodies) from N clients at once, each client a connection of its own that sends its next photo as soon
as its answer comes; the table gives requests/s over the round, latency percentiles, errors (any answer
but 200, or no answer), and the mean batch size the server reached (images per model call, from
/metrics). "offline" is `rapidpose.predict_photos` (what `rapidpose predict` runs: decoding, detection
and pose overlapped) over the same number of the same photos, in this process, before the server starts.

    python benchmarks/serve_load.py --model random-s --clients 1 4 16 --requests 200
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 1 4 16 64
"""
from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
PHOTOS = [ASSETS / "images" / "coco-mmpose", ASSETS / "images" / "coco-val2017-100"]
RTMDET = ASSETS / "detectors" / "rtmdet-nano-person.onnx"


def offline_rate(args, paths) -> float:
    """Images/s of predict_photos over `paths` (after one warm-up batch), the server's settings."""
    from rapidpose.evaluate.speed import random_model
    from rapidpose.photos.pipeline import predict_photos
    from rapidpose.topdown.estimator import PoseEstimator

    model = random_model(args.model.split("-", 1)[1]) if args.model.startswith("random-") else args.model
    est = PoseEstimator(model, detector=args.detector, device=args.device, backend=args.backend,
                        precision=args.precision, batch_size=args.batch_size)
    for _ in predict_photos(est, paths[:16]):
        pass
    start = time.perf_counter()
    done = sum(1 for _ in predict_photos(est, paths))
    return done / (time.perf_counter() - start)


class Server:
    """`rapidpose serve` in a process of its own on a free loopback port; its messages kept (and shown
    if it fails)."""

    def __init__(self, args):
        command = [sys.executable, "-m", "rapidpose", "serve", "--model", args.model, "--detector", str(args.detector),
                   "--device", args.device, "--backend", args.backend, "--precision", args.precision,
                   "--batch-size", str(args.batch_size), "--max-batch-size", str(args.max_batch_size),
                   "--max-wait-ms", str(args.max_wait_ms), "--workers-per-device", str(args.workers_per_device),
                   "--queue-size", str(args.queue_size), "--host", "127.0.0.1", "--port", "0"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.said, self.url = [], None
        while self.url is None:
            line = self.process.stderr.readline()
            if not line:
                raise SystemExit("the server ended before it listened:\n" + "".join(self.said))
            self.said.append(line)
            found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
            self.url = found and found.group(1)
        threading.Thread(target=lambda: self.said.extend(self.process.stderr), daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: the server's graceful shutdown
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def batch_figures(text: str) -> tuple[float, float]:
    """(images, model calls) so far, from the server's /metrics."""
    def value(name):
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("rapidpose_batch_size_sum"), value("rapidpose_batch_size_count")


async def _clients(url: str, bodies: list[bytes], clients: int, requests: int) -> tuple[list, list]:
    """`requests` POSTs from `clients` concurrent connections: their latencies (s) and errors."""
    import httpx

    latencies, errors, sent = [], [], 0

    async def client():
        nonlocal sent
        async with httpx.AsyncClient(timeout=120) as http:
            while sent < requests:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                try:
                    answer = await http.post(f"{url}/predict", content=body, headers={"content-type": "image/jpeg"})
                    ok = answer.status_code == 200
                    if not ok:
                        errors.append(f"{answer.status_code}: {answer.text[:120]}")
                except httpx.HTTPError as exc:
                    ok = False
                    errors.append(f"{type(exc).__name__}: {exc}")
                if ok:
                    latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def _client_process(url: str, paths: list[str], clients: int, requests: int, offset: int) -> tuple[list, list]:
    bodies = [Path(p).read_bytes() for p in paths]
    bodies = bodies[offset % len(bodies):] + bodies[:offset % len(bodies)]
    return asyncio.run(_clients(url, bodies, clients, requests))


def load(url: str, paths: list[str], clients: int, requests: int, processes: int = 1) -> dict:
    """`requests` POSTs from `clients` concurrent connections, spread over `processes` client
    processes (one asyncio client process tops out near a thousand requests/s); latencies, errors,
    the mean batch size the server reached."""
    import httpx
    from concurrent.futures import ProcessPoolExecutor

    before = batch_figures(httpx.get(f"{url}/metrics").text)
    processes = max(1, min(processes, clients))
    shares = [(clients // processes + (k < clients % processes), requests // processes + (k < requests % processes))
              for k in range(processes)]
    start = time.perf_counter()
    if processes == 1:
        parts = [_client_process(url, paths, clients, requests, 0)]
    else:
        with ProcessPoolExecutor(processes) as pool:
            parts = list(pool.map(_client_process, [url] * processes, [paths] * processes, *zip(*shares),
                                  [k * 7 for k in range(processes)]))
    wall = time.perf_counter() - start
    after = batch_figures(httpx.get(f"{url}/metrics").text)
    latencies = [t for part in parts for t in part[0]]
    errors = [e for part in parts for e in part[1]]
    calls = after[1] - before[1]
    ms = np.percentile(np.asarray(latencies) * 1000, [50, 90, 99]) if latencies else [float("nan")] * 3
    return {"clients": clients, "requests": requests, "rate": len(latencies) / wall, "p50": ms[0], "p90": ms[1],
            "p99": ms[2], "errors": errors, "batch": (after[0] - before[0]) / calls if calls else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a server that runs already (default: start one on loopback)")
    parser.add_argument("--model", default="random-s", help="as `rapidpose serve --model` (default random-s)")
    parser.add_argument("--detector", default=str(RTMDET) if RTMDET.exists() else "rtmdet-nano",
                        help="as `rapidpose serve --detector` (default the shared assets' RTMDet-nano)")
    parser.add_argument("--device", default="auto", help="(default auto)")
    parser.add_argument("--backend", default="auto", help="(default auto)")
    parser.add_argument("--precision", default="auto", help="(default auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per network batch (default 64)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="(default 64)")
    parser.add_argument("--max-wait-ms", type=float, default=5, help="(default 5)")
    parser.add_argument("--workers-per-device", type=int, default=1, help="(default 1)")
    parser.add_argument("--queue-size", type=int, default=256, help="(default 256)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="(default 1 4 16 64)")
    parser.add_argument("--requests", type=int, default=200, help="requests per round (default 200)")
    parser.add_argument("--photos", nargs="+", default=[str(p) for p in PHOTOS],
                        help="photos or folders (default the shared assets' coco-mmpose and coco-val2017-100)")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline figure (default: measured)")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="client processes the connections are spread over (default 1; a GPU server wants "
                             "about one per 250 requests/s)")
    args = parser.parse_args()

    from rapidpose.io import expand_paths

    paths = expand_paths(args.photos)
    used = [paths[i % len(paths)] for i in range(args.requests)]  # the photos a round sends, in its order
    offline = None
    if not (args.no_offline or args.url):
        offline = offline_rate(args, used)
        print(f"offline predict_photos: {offline:.1f} images/s over {len(used)} photos", file=sys.stderr)
    server = None if args.url else Server(args)
    url = args.url or server.url
    try:
        load(url, [str(p) for p in paths], 2, 8)  # warm-up
        rows = []
        for clients in args.clients:
            row = load(url, [str(p) for p in paths], clients, args.requests, args.client_processes)
            rows.append(row)
            print(f"{clients} clients: {row['rate']:.1f} requests/s, {len(row['errors'])} errors", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(f"\n{args.model} ({'random weights' if args.model.startswith('random-') else 'weights as named'}), "
          f"detector {Path(args.detector).name}, device {args.device}, backend {args.backend}, precision "
          f"{args.precision}; {len(paths)} photos; --max-batch-size {args.max_batch_size} --max-wait-ms "
          f"{args.max_wait_ms:g} --workers-per-device {args.workers_per_device}\n")
    print("| clients | requests | requests/s | of offline | p50 ms | p90 ms | p99 ms | errors | mean batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = f"{r['rate'] / offline:.0%}" if offline else "-"
        print(f"| {r['clients']} | {r['requests']} | {r['rate']:.1f} | {share} | {r['p50']:.0f} | {r['p90']:.0f} | "
              f"{r['p99']:.0f} | {len(r['errors'])} | {r['batch']:.1f} |")
    if offline:
        print(f"| offline `predict_photos` | {len(used)} | {offline:.1f} | 100% | | | | | |")
    for r in rows:
        for error in r["errors"][:3]:
            print(f"{r['clients']} clients: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
