"""Memory is bounded by the network batch, not by the number of people: on the CPU each batch of
people is cropped, normalised, run and decoded on its own (PoseEstimator._run_on_cpu), and the
chunked result is the one-big-batch result."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ASSETS

from rapidpose import PoseEstimator
from rapidpose.timing import StageTimer

IMAGE = ASSETS / "images" / "coco-mmpose" / "000000000785.jpg"

# Peak RSS growth of a predict() of many boxes on one photo, in a fresh interpreter (ru_maxrss is a
# high-water mark: it has to start clean). A first predict() of one network batch of people comes
# before, so the growth is what the extra people cost on top of one batch.
MEASURE = r"""
import json, resource, sys
import numpy as np
from rapidpose import PoseEstimator
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random

model, people, batch_size = json.loads(sys.argv[1])
if isinstance(model, dict):  # a ViTPose config: random weights, made here
    model = init_random(ViTPose(ViTPoseConfig(**model)), 1)
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (720, 1280, 3), np.uint8)
corner = rng.uniform(0, 900, (people, 2)) * [1, 0.5]
boxes = np.concatenate([corner, corner + rng.uniform(40, 300, (people, 2))], axis=1).astype(np.float32)
est = PoseEstimator(model, backend="torch", precision="fp32", batch_size=batch_size)
est.predict([image], [boxes[:batch_size]])  # one full batch: the network's own working set
# at most 2 GiB more address space: code that holds everyone's crops at once stops here with a
# MemoryError instead of taking a shared machine's memory (20,000 people would want ~28 GB)
size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
poses = est.predict([image], [boxes])[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "before_mb": before / 1024,
                  "keypoints": list(poses.keypoints.shape), "scores": list(poses.keypoint_scores.shape),
                  "finite": bool(np.isfinite(poses.keypoints).all())}))
"""


def peak_growth(model, people, batch_size=64):
    """Runs MEASURE in a subprocess (same interpreter and environment, so a PYTHONPATH given to
    pytest is what it imports) and returns its JSON line."""
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps([model, people, batch_size])],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode and "MemoryError" in done.stderr:
        pytest.fail(f"predict() wanted more than 2 GiB on top of one batch: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# the smallest ViTPose: real crops, normalisation, torch network and decoding, fast on 2 cores
MICRO = {"dim": 64, "depth": 1, "heads": 1, "head": "simple"}


def test_20000_people_on_one_photo_cost_no_more_than_one_batch():
    """20,000 boxes on one photo (35 s on 2 cores with the micro network). One big batch (the code
    before issue 16) grew by 4.1 GB at 3,000 people (crops, normalised crops and heatmaps of everyone
    at once, ~1.4 MB a person: ~28 GB here, more than this 24 GB machine has; the address-space limit
    in MEASURE stops it at 2 GiB). Chunked, what outlives a chunk is ~200 bytes a person (keypoints,
    scores); the peak grows by 80-160 MB (measured at 200 to 20,000 people), freed chunk buffers that
    glibc's heap keeps rather than hands back."""
    got = peak_growth(MICRO, 20000)
    assert got["keypoints"] == [20000, 17, 2] and got["scores"] == [20000, 17] and got["finite"]
    assert got["growth_mb"] < 400, got  # measured 110 MB; one big batch at 3,000 people: 4,130 MB


def _photo():
    return cv2.imread(str(IMAGE))[:, :, ::-1].copy()


def _images_and_boxes():
    """11 people over 5 images (one without people, one skipped box): at batch 3 the chunks span
    images and split an image's people; 11 is not a multiple of 3."""
    photo = _photo()
    images = [photo, photo[:300, :400], np.zeros((20, 30, 3), np.uint8), photo[::-1], photo[:, ::-1]]
    boxes = [np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250], [400, 50, 600, 400]]),
             np.array([[5, 5, 100, 200], [150, 20, 390, 290]]),
             np.zeros((0, 4)),
             np.array([[0, 0, 640, 425], [2000, 2000, 2100, 2100]]),  # the second lies outside: skipped
             np.array([[100, 30, 300, 400], [20, 200, 150, 420], [450, 10, 630, 300], [200, 100, 260, 220]])]
    return images, boxes


@pytest.mark.parametrize("path", ["cpu", "gpu"], ids=["cpu-path", "gpu-path-driven-on-the-cpu"])
@pytest.mark.parametrize("flip_test", [False, True], ids=["plain", "flip"])
def test_chunks_give_the_one_batch_result(tiny_checkpoint, flip_test, path, monkeypatch):
    """Chunks of exactly one batch, an image's people split across two where they fall on a boundary (on
    the GPU path too: a chunk one crop over the batch would cost a second, nearly empty network run)."""
    images, boxes = _images_and_boxes()
    whole = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=flip_test, batch_size=64)
    whole.on_gpu = path == "gpu"
    want = whole.predict(images, boxes, return_heatmaps=True)

    chunked = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=flip_test, batch_size=3)
    chunked.on_gpu = path == "gpu"
    batches = []
    forward = chunked.runtime.model.forward
    monkeypatch.setattr(chunked.runtime.model, "forward",
                        lambda x, dataset_index=None: batches.append(len(x)) or forward(x, dataset_index))
    chunked.timer = StageTimer()
    got = chunked.predict(images, boxes, return_heatmaps=True)

    # 11 people in chunks of 3, 3, 3, 2; with the flip test each chunk's mirrors join it
    assert batches == ([3, 3, 3, 3, 3, 3, 3, 1] if flip_test else [3, 3, 3, 2])
    assert set(chunked.timer.seconds) >= {"crop", "network", "decode"}
    assert [len(p) for p in got] == [len(p) for p in want] == [4, 2, 0, 1, 4]
    # the GPU path's torch warp (no Triton here) samples at float32 points taken from the region a chunk
    # uploads, and an image split across two chunks uploads two smaller regions: a rare crop value one
    # level apart, which random weights spread thinly over the heatmaps
    heatmap_tolerance = 1e-5 if path == "cpu" else 1e-3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.boxes, w.boxes)
        assert g.keypoints.shape == w.keypoints.shape and g.heatmaps.shape == w.heatmaps.shape
        scale = max(np.abs(w.heatmaps).max(initial=0), 1)
        np.testing.assert_allclose(g.heatmaps, w.heatmaps, rtol=0, atol=heatmap_tolerance * scale)
        np.testing.assert_allclose(g.keypoint_scores, w.keypoint_scores, rtol=0, atol=heatmap_tolerance)
    assert_keypoints_agree(got, want, path)

    # without heatmaps: the same keypoints, and no heatmaps kept
    lean = chunked.predict(images, boxes)
    assert all(p.heatmaps is None for p in lean)
    assert_keypoints_agree(lean, want, path)


def assert_keypoints_agree(got, want, path):
    d = np.concatenate([np.linalg.norm(g.keypoints - w.keypoints, axis=-1).ravel() for g, w in zip(got, want)])
    if path == "cpu":
        assert d.max() <= 1e-3
    else:  # near-ties of random weights' flat heatmaps aside
        assert np.median(d) < 1e-3 and np.percentile(d, 90) < 0.05


class CountingTimer(StageTimer):
    def __init__(self):
        super().__init__()
        self.calls = {}

    def __call__(self, stage):
        self.calls[stage] = self.calls.get(stage, 0) + 1
        return super().__call__(stage)


def test_chunks_time_every_stage_and_handle_no_people(tiny_checkpoint):
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", batch_size=2)
    est.timer = CountingTimer()
    est.predict([_photo()], [np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250]])])
    # two chunks, each stage timed in each, the seconds added up
    assert {s: est.timer.calls[s] for s in ("crop", "network", "decode")} == {"crop": 2, "network": 2, "decode": 2}
    assert all(est.timer.seconds[s] > 0 for s in ("crop", "network", "decode"))

    empty = est.predict([np.zeros((20, 30, 3), np.uint8)], [np.zeros((0, 4))], return_heatmaps=True)[0]
    assert empty.keypoints.shape == (0, 17, 2) and empty.keypoint_scores.shape == (0, 17)
    assert empty.heatmaps.shape == (0, 17, 64, 48)
