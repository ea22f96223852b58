from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
RTMDET = ASSETS / "detectors" / "rtmdet-nano-person.onnx"
YOLOX = ASSETS / "detectors" / "yolox-nano.onnx"


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
    """`got` draws what `want` (cv2's drawing of `original`) draws, to within anti-aliasing: where either
    draws, under 4 levels off on average and under 1% of the pixels more than 48 off."""
    drawn = (want != original) | (got != original)
    off = np.abs(got.astype(int) - want.astype(int))[drawn]
    assert drawn.sum() == 0 or (off.mean() < 4 and (off > 48).mean() < 0.01), \
        f"{what}: {off.mean():.2f} levels off on average, {(off > 48).mean():.2%} of the pixels far off"
