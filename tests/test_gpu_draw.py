"""Poses drawn into batches of I420 frames where they are (gpu_draw): the cv2 pictures, on the GPU by a
Triton kernel to within cv2's anti-aliasing (checked without a GPU by Triton's interpreter), on the CPU
exactly."""

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import ASSETS, TRITON_PLATFORM, assert_drawn_like

from rapidpose.draw.cpu import draw_poses_i420
from rapidpose.draw.gpu import draw_poses_i420_batch
from rapidpose.errors import InputError
from rapidpose.results import Poses
from rapidpose.skeletons import SKELETONS
from rapidpose.video.sources import i420_planes

TWO_PEOPLE = ASSETS / "video" / "two-people-1080p.mp4"
BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
CUDA = torch.cuda.is_available()


def frames_of(path, n):
    with av.open(str(path)) as container:
        return [f.to_ndarray() for _, f in zip(range(n), container.decode(video=0))]


def people(w, h, seed, n=2, track_ids=True):
    """n people spread over a w x h frame: a skeleton of plausible proportions, some joints unsure."""
    rng = np.random.default_rng(seed)
    template = np.array([[0, 0], [-1, -1], [1, -1], [-2, 0], [2, 0], [-4, 5], [4, 5], [-6, 11], [6, 11],
                         [-6, 17], [6, 17], [-3, 18], [3, 18], [-3, 27], [3, 27], [-3, 36], [3, 36]], np.float64)
    keypoints, boxes = [], []
    for i in range(n):
        size = h * rng.uniform(0.015, 0.025)
        centre = np.array([w * (i + 0.5) / n, h * 0.15]) + rng.uniform(-0.05, 0.05, 2) * (w, h)
        k = centre + template * size + rng.normal(0, size * 0.3, template.shape)
        keypoints.append(k)
        boxes.append([*(k.min(0) - size), *(k.max(0) + size)])
    scores = rng.uniform(0.1, 1.0, (n, 17))
    ids = np.arange(1, n + 1) * 7 if track_ids else None
    return Poses(np.array(boxes), rng.uniform(0.3, 1, n), np.array(keypoints), scores, SKELETONS["coco"], ids)


def crop_i420(frame, x, y, w, h):
    """The w x h region of an I420 frame at (x, y) (all even) as an I420 frame of its own."""
    planes = i420_planes(frame)
    parts = [planes[0][y:y + h, x:x + w]] + [p[y // 2:(y + h) // 2, x // 2:(x + w) // 2] for p in planes[1:]]
    return np.concatenate([p.reshape(-1) for p in parts]).reshape(h * 3 // 2, w)


@pytest.fixture
def interpreted_kernel(monkeypatch):
    """gpu_draw's GPU path with its Triton kernel run by Triton's interpreter (numpy, on CPU tensors):
    the GPU's pictures without a GPU, a few hundred times slower."""
    if not TRITON_PLATFORM:
        pytest.skip("Triton ships for Linux x86-64 only: its interpreter is not there on this platform")
    import triton  # a test dependency on Linux x86-64: a broken install fails, never skips

    from rapidpose.draw import gpu as gpu_draw

    with monkeypatch.context() as env:
        env.setenv("TRITON_INTERPRET", "1")  # read when a kernel is made: this one copy is interpreted
        kernel = triton.jit(gpu_draw._draw_plane.fn)
    monkeypatch.setattr(gpu_draw, "_draw_plane", kernel)
    return gpu_draw._draw_with_triton


# small crops (the interpreter's time goes as tiles x shapes), widths and heights not whole tiles, the
# chroma width odd: the basketball frames' own scale; a 1080p frame's lines, joints and labels
CROPS = {"426x240": (BASKETBALL, (106, 60, 214, 120), None, [(0, 2, True), None, (1, 1, False)]),
         "1080p": (TWO_PEOPLE, (640, 260, 256, 320), 6, [(2, 1, True), None])}


@pytest.mark.parametrize("name", CROPS)
def test_the_kernel_draws_a_batch_as_cv2_draws_it_on_the_cpu(name, interpreted_kernel):
    """The kernel (gpu_draw's GPU path, interpreted on the CPU) against cv2's drawing of the batch (its
    CPU path: draw_poses_i420 frame by frame, in place), each frame with its own people (with track ids
    and without) or nobody. Where either draws, the two agree but for the edge pixels of the anti-
    aliasing; a pixel more than one away from anything cv2 draws is left alone, and so is a frame
    without people."""
    path, (x, y, w, h), thickness, who = CROPS[name]
    frames = [crop_i420(f, x, y, w, h) for f in frames_of(path, len(who))]
    poses = [Poses.empty(SKELETONS["coco"]) if p is None else people(w, h, p[0], n=p[1], track_ids=p[2])
             for p in who]
    batch, on_the_cpu = torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(frames))
    assert draw_poses_i420_batch(on_the_cpu, poses, thickness=thickness) is on_the_cpu
    interpreted_kernel(batch, poses, {"thickness": thickness})
    near = np.ones((3, 3), np.uint8)
    for i, (got, want, frame, p) in enumerate(zip(batch.numpy(), on_the_cpu.numpy(), frames, poses)):
        if not len(p):
            np.testing.assert_array_equal(got, frame)
            np.testing.assert_array_equal(want, frame)
            continue
        drawn, cv2_drawn = int((got != frame).sum()), int((want != frame).sum())
        assert drawn > 0.8 * cv2_drawn > 1000, f"frame {i}: {drawn} pixels drawn, cv2 draws {cv2_drawn}"
        assert_drawn_like(got, want, frame, f"frame {i}")
        for plane, g, wp, o in zip("YUV", i420_planes(got), i420_planes(want), i420_planes(frame)):
            far = cv2.dilate((wp != o).astype(np.uint8), near) == 0
            assert (g[far] == o[far]).all(), f"frame {i} {plane}: drawn where cv2 does not draw"


def test_a_batch_is_planned_at_once_as_each_frame_alone():
    """The kernel's shapes for frame i of a batch (the people of all frames planned together) are those
    of frame i planned alone, in the same drawing order, with the same text."""
    from rapidpose.draw.gpu import _OFFSET, _SPRITE, _WIDTH, _tables

    # ids in some frames and not in others; overlapping heads; the same ids in another order
    poses = [people(640, 360, i, n=1 + i % 3, track_ids=i % 2 == 0) for i in range(5)] + [Poses.empty(SKELETONS["coco"])]
    poses.append(people(640, 360, 0, n=1)[[0]])
    poses.append(poses[2][[2, 0, 1]])

    def shapes(rows, starts, atlas, i):
        mine = rows[starts[i]:starts[i + 1]]
        texts = [atlas[int(r[_OFFSET]):int(r[_OFFSET]) + int(r[_WIDTH]) * int(r[4] - r[2] + 1)] for r in mine
                 if r[0] == _SPRITE]
        return np.delete(mine, _OFFSET, axis=1), texts

    (luma, chroma, atlas) = _tables(poses, 640, 360, {})
    for i, p in enumerate(poses):
        alone_luma, alone_chroma, alone_atlas = _tables([p], 640, 360, {})
        for together, alone in ((luma, alone_luma), (chroma, alone_chroma)):
            got, got_texts = shapes(*together, atlas, i)
            want, want_texts = shapes(*alone, alone_atlas, 0)
            np.testing.assert_array_equal(got, want)
            assert len(got_texts) == len(p)  # a label each
            for a, b in zip(got_texts, want_texts, strict=True):
                np.testing.assert_array_equal(a, b)
    assert (luma[1][1:] - luma[1][:-1] > 0).sum() == 7  # every frame but the empty one has shapes


def test_a_batch_that_is_not_i420_frames_is_refused():
    with pytest.raises(InputError, match="uint8"):
        draw_poses_i420_batch(torch.zeros((1, 360, 426), dtype=torch.float32), [people(426, 240, 0)])
    with pytest.raises(InputError, match="1 poses"):
        draw_poses_i420_batch(torch.zeros((2, 360, 426), dtype=torch.uint8), [people(426, 240, 0)])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (and Triton)")
@pytest.mark.parametrize("path", [TWO_PEOPLE, BASKETBALL], ids=["1080p", "426x240"])
def test_on_the_gpu_the_pictures_are_cv2s_to_within_its_anti_aliasing(path):
    """Every frame of a batch gets its own people; pixels cv2 leaves alone stay alone, and where either
    draws, the two agree but for the edge pixels of the anti-aliasing."""
    frames = frames_of(path, 6)
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    poses = [people(w, h, i, n=1 + i % 3, track_ids=i % 2 == 0) for i in range(5)] + [Poses.empty(SKELETONS["coco"])]
    batch = torch.from_numpy(np.stack(frames)).cuda()
    got = draw_poses_i420_batch(batch, poses).cpu().numpy()
    for i, (frame, p) in enumerate(zip(frames, poses)):
        want = draw_poses_i420(frame.copy(), p)
        if not len(p):
            np.testing.assert_array_equal(got[i], frame)
            continue
        assert (got[i] != frame).sum() > 500
        assert_drawn_like(got[i], want, frame, f"frame {i}")
