import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
RTMDET = ASSETS / "detectors" / "rtmdet-nano-person.onnx"
YOLOX = ASSETS / "detectors" / "yolox-nano.onnx"


def _scaled_mm_on_cpu() -> bool:
    """Whether this torch build runs torch._scaled_mm on the CPU (2.13 does); if not, the CPU tests emulate it."""
    import torch
    from torch import nn

    from rapidpose.runtime.float8 import Float8Linear

    try:
        Float8Linear(nn.Linear(16, 16))(torch.ones(16, 16, dtype=torch.bfloat16))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fp8_gpu() -> bool:
    import torch

    return _cuda_available() and torch.cuda.get_device_capability() >= (8, 9)


TRITON_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"  # where Triton ships (a test dependency)
# Without a GPU, Triton runs kernels only by its interpreter (numpy, on CPU tensors): chosen before triton.language
# is first imported, so that its own jit functions (tl.max, tl.sum) run there too (test_triton_interpreted.py)
INTERPRETED_TRITON = TRITON_PLATFORM and not _cuda_available()
if INTERPRETED_TRITON:
    os.environ.setdefault("TRITON_INTERPRET", "1")


SCALED_MM_ON_CPU = _scaled_mm_on_cpu()
CPU_SCALED_MM = pytest.mark.skipif(not SCALED_MM_ON_CPU, reason="this torch build has no torch._scaled_mm on the CPU")
GPU = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
FP8_GPU = pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (compute capability 8.9 or more)")


def run_cli(*argv) -> tuple[int, str]:
    """`rapidpose` with these arguments in this process: its exit code and what it said on stderr."""
    import contextlib
    import io

    from rapidpose.cli import main

    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        code = main([str(a) for a in argv])
    return code, said.getvalue()


def read_jsonl(path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """Ray on this machine's two cores for one test file; its workers offline, with a cache of their own."""
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("ray-cache")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAPIDPOSE_CACHE": str(cache)}})
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test may reach a network or the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path_factory.mktemp("cache")))


def randomize_(module, seed=0):
    """Random weights with realistic spread for any torch module (BN statistics included)."""
    from rapidpose.model.vitpose import init_random

    return init_random(module, seed)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 2-block ViTPose-S with random weights in the official .pth layout (fast pipeline tests)."""
    import torch

    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig

    model = randomize_(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "vitpose-tiny.pth"
    torch.save({"meta": {"note": "random weights"}, "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def coco_mmpose():
    import json

    return json.loads((ASSETS / "images" / "coco-mmpose" / "test_coco.json").read_text())


def gaussian_heatmap(h, w, x, y, sigma=2.0):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def assert_drawn_like(got, want, original, what=""):
    """`got` (an I420 frame) draws what `want` (cv2's drawing of `original`) draws, to within anti-
    aliasing: seen through a 3x3 blur, each plane within 32 levels everywhere and 3 on average where
    either drew."""
    import cv2

    from rapidpose.video.sources import i420_planes

    for name, g, w, o in zip("YUV", i420_planes(got), i420_planes(want), i420_planes(original)):
        drawn = (g != o) | (w != o)
        if drawn.any():
            off = np.abs(cv2.blur(g.astype(np.float32), (3, 3)) - cv2.blur(w.astype(np.float32), (3, 3)))
            assert off.max() < 32 and off[drawn].mean() < 3, \
                f"{what} {name}: blurred, {off.max():.1f} levels off at most, {off[drawn].mean():.2f} on average"


def pytest_configure(config):
    """The shared assets are part of the test setup: without them the run stops with one clear message
    rather than failing (or skipping) test by test."""
    if not RTMDET.is_file():
        raise pytest.UsageError(f"the shared test assets are not at {ASSETS}: the tests read photos, videos and "
                                "detectors from ../shared/assets beside the checkout (see README)")
