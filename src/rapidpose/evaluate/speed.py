"""Speed: where the time goes, stage by stage, and network throughput against batch size (`rapidpose bench` prints it)."""
from __future__ import annotations

import platform
import resource
import time

import cv2
import numpy as np

from rapidpose.timing import StageTimer

STAGES = ("read", "detect", "crop", "network", "decode", "draw")


def random_model(variant: str):
    """Random weights of a published shape: for speed only, the keypoints mean nothing."""
    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
    from rapidpose.skeletons import COCO

    model = init_random(ViTPose(ViTPoseConfig.from_variant(variant)))
    model.skeleton, model.source = COCO, f"random-{variant}"
    return model


def synthetic_boxes(width: int, height: int, people: int) -> np.ndarray:
    """`people` person-shaped boxes spread across the image (about 1/3 of its height each)."""
    h = height / 3
    xs = np.linspace(0, width - h / 2, people + 2)[1:-1]
    ys = np.full(people, height / 3)
    return np.stack([xs, ys, xs + h / 2, ys + h], axis=1).astype(np.float32)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_pipeline(est, paths, synthetic, people: int | None, images_per_batch: int, repeats: int,
                   draw: bool, step=None) -> tuple[dict, int, int, float]:
    """Run the whole path `repeats` times; returns seconds per stage, images, people, wall seconds.
    step(n), if given, is called after each batch with its number of images (a progress bar's update)."""
    from rapidpose.draw.cpu import draw_poses
    from rapidpose.io import read_image

    timer = StageTimer(sync=_sync(est))
    sources = paths or synthetic
    n_images = n_people = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(sources), images_per_batch):
            chunk = sources[i:i + images_per_batch]
            with timer("read"):
                images = [read_image(p) for p in chunk] if paths else [img.copy() for img in chunk]
            boxes = None if people is None else [synthetic_boxes(im.shape[1], im.shape[0], people) for im in images]
            est.timer = timer
            results = est.predict(images, boxes)
            if draw:
                with timer("draw"):
                    for image, poses in zip(images, results):
                        draw_poses(image, poses)
            n_images += len(images)
            n_people += sum(len(r) for r in results)
            if step is not None:
                step(len(images))
    est.timer = StageTimer()  # detach
    return dict(timer.seconds), n_images, n_people, time.perf_counter() - start


def bench_photos(est, paths, images_per_batch: int, repeats: int, step=None) -> tuple[int, int, float]:
    """The photo path as `rapidpose predict` runs it, stages overlapped (photos.pipeline), `repeats`
    passes over the files: images, people and wall seconds. step(n): called with each image done."""
    from rapidpose.photos.pipeline import predict_photos

    n_images = n_people = 0
    start = time.perf_counter()
    for result in predict_photos(est, list(paths) * repeats, images_per_batch=images_per_batch):
        n_images += 1
        n_people += len(result.poses) if result.poses is not None else 0
        if step is not None:
            step(1)
    return n_images, n_people, time.perf_counter() - start


def _sync(est):
    if est.on_gpu:
        import torch

        return torch.cuda.synchronize
    return None


def bench_network(runtime, batches, seconds: float = 1.0, step=None) -> list[tuple[int, float]]:
    """Crops per second of the backend alone at each batch size (inputs already in memory): 3 warm-up
    runs, then runs for about `seconds`, at least 2. seconds=0 times a single run after a single
    warm-up: a quick, rough figure (smoke tests). step(1), if given, is called after each batch size."""
    w, h = runtime.input_size
    warm_up, least = (3, 2) if seconds > 0 else (1, 1)
    out = []
    for batch in batches:
        x = np.random.default_rng(0).normal(size=(batch, 3, h, w)).astype(np.float32)
        if hasattr(runtime, "run"):  # keep the input on the device: the network alone
            import torch

            xt = torch.from_numpy(x).to(runtime.device)
            call = lambda: runtime.run(xt)  # noqa: E731
            sync = torch.cuda.synchronize if runtime.device.startswith("cuda") else (lambda: None)
        else:
            call, sync = (lambda: runtime(x)), (lambda: None)
        for _ in range(warm_up):
            call()
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < least:
            call()
            n += 1
        sync()
        out.append((batch, batch * n / (time.perf_counter() - t0)))
        if step is not None:
            step(1)
    return out


def plot_throughput(points, path, title: str) -> None:
    """A small line chart (crops/s against batch size, log2 x axis) drawn with OpenCV."""
    w, h, m = 720, 420, 70
    img = np.full((h, w, 3), 255, np.uint8)
    xs = np.log2([b for b, _ in points])
    ys = np.array([v for _, v in points])
    x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
    ymax = ys.max() * 1.15
    px = lambda x: int(m + (x - x0) / (x1 - x0) * (w - 2 * m))  # noqa: E731
    py = lambda y: int(h - m - y / ymax * (h - 2 * m))  # noqa: E731
    cv2.line(img, (m, h - m), (w - m, h - m), (0, 0, 0), 1)
    cv2.line(img, (m, m), (m, h - m), (0, 0, 0), 1)
    for (b, v), x in zip(points, xs):
        cv2.putText(img, str(b), (px(x) - 8, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:,.0f}", (px(x) - 20, py(v) - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 60, 0), 1,
                    cv2.LINE_AA)
    pts = np.array([[px(x), py(v)] for x, v in zip(xs, ys)], np.int32)
    cv2.polylines(img, [pts], False, (200, 60, 0), 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(int(c) for c in p), 4, (200, 60, 0), -1, cv2.LINE_AA)
    cv2.putText(img, title, (m, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "batch size", (w // 2 - 40, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "crops/s", (5, m - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
