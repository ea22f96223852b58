"""Torch crop warp and decoding give the numbers of the numpy/cv2 versions, on CPU and on CUDA."""
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import GPU, gaussian_heatmap

from rapidpose.topdown.decode import decode_heatmaps, flip_back
from rapidpose.topdown.geometry import boxes_to_center_scale, normalize_crops, udp_matrices, warp_crops
from rapidpose.topdown.gpu_ops import (BatchDecoder, PinnedUploader, _blurred_neighbourhood, crop_regions,
                                       decode_heatmaps_torch, flip_back_torch, gaussian_kernel_1d, warp_crops_batch,
                                       warp_crops_torch)

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
PHOTO = ASSETS / "images" / "coco-mmpose" / "000000000785.jpg"
LEVEL = 1 / 255 / 0.224  # one 0..255 level in network-input units (the smallest std, 0.224)

# inside, partly outside on every side, wholly around the image, a tiny box, and one mostly outside
BOXES = np.array([[280, 44, 498, 582], [10.3, 20.7, 200.2, 300.9], [-50, -30, 120, 200],
                  [400, 300, 700, 500], [100.5, 100.25, 101.5, 103.0], [-100, -100, 800, 700],
                  [600, 400, 900, 900]], np.float32)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device(request.param)


@pytest.fixture(scope="module")
def photo():
    return cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)


def cv2_warp_is_float_bilinear() -> bool:
    """cv2 >= 4.11 samples at the exact float position; older cv2 rounds it to 1/32 px first."""
    image = np.array([[[0] * 3, [255] * 3]], np.uint8)
    m = np.array([[1, 0, -0.01], [0, 1, 0]], np.float32)  # crop pixel 0 samples x = 0.01
    return int(cv2.warpAffine(image, m, (1, 1))[0, 0, 0]) == 3  # 2.55 -> 3 (fixed point: 0)


@pytest.mark.parametrize("ksize", [1, 3, 5, 7, 9, 11, 13, 17, 21, 31])
def test_gaussian_kernel_is_cv2s(ksize):
    assert np.array_equal(gaussian_kernel_1d(ksize), cv2.getGaussianKernel(ksize, 0, ktype=cv2.CV_32F).ravel())


def test_warp_equals_cv2_on_a_photo(device, photo):
    center, scale = boxes_to_center_scale(BOXES)
    matrices = udp_matrices(center, scale)
    crops = warp_crops(photo, matrices)
    want_raw = crops.astype(np.float64).transpose(0, 3, 1, 2)
    want = normalize_crops(crops)
    image = torch.from_numpy(photo).to(device)

    raw = warp_crops_torch(image, matrices, mean=None).cpu().numpy()
    got = warp_crops_torch(image, matrices)
    assert got.shape == (len(BOXES), 3, 256, 192) and got.dtype == torch.float32 and got.device.type == device.type
    got = got.cpu().numpy()
    diff = np.abs(raw - want_raw)
    if cv2_warp_is_float_bilinear():
        # measured (CPU, cv2 5.0): 5.5e-5 of the values one level off (a .5 tie rounded the other way),
        # all others equal; the network input is then bitwise equal there and one level off at most
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        assert np.abs(got - want).max() <= LEVEL * 1.0001
        assert (got == want).mean() > 0.999
    else:  # cv2's 1/32 px fixed-point positions: a few percent of the values off by up to a few levels
        assert diff.mean() < 0.1 and diff.max() <= 6
        assert np.abs(got - want).max() <= 6 * LEVEL * 1.0001

    # without rounding: the exact bilinear value, within half a level of cv2's rounded one
    # (measured: mean 0.12, max 0.511 levels with cv2 5.0)
    unrounded = warp_crops_torch(image, matrices, mean=None, round_like_cv2=False).cpu().numpy()
    diff = np.abs(unrounded - want_raw)
    if cv2_warp_is_float_bilinear():
        assert diff.mean() < 0.3 and diff.max() < 0.6
    # outside the image the crop is black: the last box's lower right corner lies off the photo
    assert (raw[-1, :, -1, -1] == 0).all()


def test_warp_of_a_gradient_samples_the_inverse_affine(device):
    h, w = 300, 400
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([xs * 255 / (w - 1), ys * 255 / (h - 1), np.zeros_like(xs)], -1).round().astype(np.uint8)
    center, scale = boxes_to_center_scale(np.array([[100, 50, 220, 250]], np.float32))
    m = udp_matrices(center, scale)
    got = warp_crops_torch(torch.from_numpy(image).to(device), torch.from_numpy(m), mean=None)[0].cpu().numpy()
    want = warp_crops(image, m)[0].transpose(2, 0, 1)
    assert np.abs(got - want).max() <= 1


def test_batch_of_images_equals_one_by_one(device, photo):
    small = np.ascontiguousarray(photo[50:300, 100:500])
    tiny = np.full((1, 3, 3), 200, np.uint8)  # a 1-pixel-high image: no division by zero
    images = [torch.from_numpy(x).to(device) for x in (photo, small, photo, tiny)]
    center, scale = boxes_to_center_scale(np.concatenate([BOXES[:3], BOXES[3:5], [[-1, -1, 2, 1]]]))
    matrices = udp_matrices(center, scale)
    counts = [3, 2, 0, 1]
    got = warp_crops_batch(images, matrices, counts)
    assert got.shape == (6, 3, 256, 192)
    start = 0
    for image, count in zip(images, counts):
        one = warp_crops_torch(image, matrices[start:start + count])
        assert torch.equal(got[start:start + count], one)
        start += count
    want_tiny = normalize_crops(warp_crops(tiny, matrices[5:]))
    assert np.abs(got[5].cpu().numpy() - want_tiny[0]).max() <= LEVEL * 1.0001


def test_warping_only_the_read_region_gives_the_whole_image_crops(device, photo):
    """The GPU path uploads only the part of each image its crops read (crop_regions)."""
    center, scale = boxes_to_center_scale(BOXES)
    matrices = udp_matrices(center, scale)
    images = [photo, photo[:, ::-1], photo]  # a strided view too
    counts = [4, 1, 2]  # the tiny box alone in the mirrored photo
    views, moved = crop_regions(images, matrices, counts)
    assert views[1].shape[:2] == (6, 5)  # the 1x3-pixel box reads about its padded size, not the photo
    assert views[2].shape[:2] == photo.shape[:2]  # a box around the whole photo reads all of it
    whole = warp_crops_batch([torch.from_numpy(np.ascontiguousarray(i)).to(device) for i in images], matrices, counts)
    regions = warp_crops_batch([torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in views], moved, counts)
    assert np.abs(whole.cpu().numpy() - regions.cpu().numpy()).max() <= LEVEL * 1.0001
    assert (np.abs(whole.cpu().numpy() - regions.cpu().numpy()) > 1e-6).mean() < 1e-3


def test_crops_reading_no_pixel_are_black():
    image = np.full((50, 60, 3), 255, np.uint8)
    far = udp_matrices(*boxes_to_center_scale(np.array([[1000, 1000, 1100, 1200]], np.float32)))
    views, moved = crop_regions([image], far, [1])
    crop = warp_crops_batch(views, moved, [1], mean=None)
    assert crop.abs().max() == 0


@pytest.mark.gpu
@GPU
def test_pinned_uploader_round_trips_in_turn():
    upload = PinnedUploader("cuda")
    rng = np.random.default_rng(0)
    for _ in range(4):  # more batches than buffers: reuse must not corrupt an earlier copy
        arrays = [rng.integers(0, 255, (37, 53, 3), np.uint8)[:, ::2], rng.normal(size=(5, 2, 3))]
        got = upload(arrays)
        assert np.array_equal(got[0].cpu().numpy(), arrays[0]) and got[1].dtype == torch.float64
        assert np.array_equal(got[1].cpu().numpy(), arrays[1])


def test_copy_arrays_copies_regions_flipped_read_only_and_empty_arrays():
    from rapidpose.topdown import gpu_ops

    rng = np.random.default_rng(0)
    # image regions over THREADED_COPY_BYTES in all (on the copy threads), with flipped, read-only,
    # float and empty arrays and a 0-d one among them
    sources = [rng.integers(0, 255, (h, 800, 3), np.uint8)[10:h - 10, 3:703] for h in (120, 560, 60)]
    assert sources[1].nbytes > gpu_ops.THREADED_COPY_BYTES > sources[0].nbytes
    flipped = rng.integers(0, 255, (520, 700, 3), np.uint8)[:, :, ::-1]  # a BGR view, large
    read_only = rng.integers(0, 255, (520, 700, 3), np.uint8)
    read_only.flags.writeable = False
    sources += [flipped, read_only, rng.normal(size=(5, 2, 3)), np.zeros((0, 3)), np.array(2.5)]
    # the whole list on the copy threads;
    # a list under THREADED_COPY_BYTES in all on the calling thread
    for chosen in (sources, [sources[0], sources[5], sources[-1]]):
        destinations = [np.full(s.shape, 7, s.dtype) for s in chosen]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gpu_ops.copy_arrays(zip(destinations, chosen))
        assert all(np.array_equal(d, s) for d, s in zip(destinations, chosen))


@pytest.mark.gpu
@GPU
def test_uploads_behind_queued_work_reach_the_callers_stream_whole():
    # the copies run on their own stream, beside the matrix products queued before them: what the caller's
    # stream does next must see the copied values, batch after batch through both pinned buffers
    upload = PinnedUploader("cuda")
    busy = torch.randn(4096, 4096, device="cuda")
    rng = np.random.default_rng(1)
    for _ in range(4):
        for _ in range(4):
            busy = busy @ busy / 64
        images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(3)]
        got = upload([image[100:600, 200:1100] for image in images])
        sums = torch.stack([g.sum(dtype=torch.int64) for g in got]).cpu().numpy()
        assert sums.tolist() == [int(image[100:600, 200:1100].sum(dtype=np.int64)) for image in images]


@pytest.mark.gpu
@GPU
def test_page_locked_arrays_go_to_the_gpu_as_they_are():
    from rapidpose.topdown.gpu_ops import pinned_empty

    upload = PinnedUploader("cuda")
    for seed in range(3):  # freed and reused by torch's host allocator in between
        arrays = [pinned_empty((37, 53)), pinned_empty((5, 2, 3), np.float64)]
        rng = np.random.default_rng(seed)
        arrays[0][:] = rng.integers(0, 255, arrays[0].shape)
        arrays[1][:] = rng.normal(size=arrays[1].shape)
        got = upload(arrays)
        assert np.array_equal(got[0].cpu().numpy(), arrays[0]) and np.array_equal(got[1].cpu().numpy(), arrays[1])
    assert upload._buffers == [None, None]  # no staging buffer was needed


def test_empty_warps(device, photo):
    image = torch.from_numpy(photo).to(device)
    assert warp_crops_torch(image, np.zeros((0, 2, 3), np.float32)).shape == (0, 3, 256, 192)
    assert warp_crops_batch([image, image], np.zeros((0, 2, 3), np.float32), [0, 0]).shape == (0, 3, 256, 192)
    assert warp_crops_batch([], np.zeros((0, 2, 3), np.float32), []).shape == (0, 3, 256, 192)
    with pytest.raises(ValueError):
        warp_crops_batch([image], np.zeros((2, 2, 3), np.float32), [1])


def noisy_heatmaps(seed, noise=0.02):
    rng = np.random.default_rng(seed)
    heatmaps = np.zeros((5, 17, 64, 48), np.float32)
    for i in range(5):
        for j in range(17):
            heatmaps[i, j] = rng.uniform(0.3, 1) * gaussian_heatmap(64, 48, rng.uniform(0, 47), rng.uniform(0, 63))
            heatmaps[i, j] += rng.normal(0, noise, (64, 48))  # peaks on edges and corners too
    return heatmaps


DECODE_BOXES = np.array([[10, 20, 110, 220], [0, 0, 640, 480], [300, 5, 320, 60], [5, 5, 400, 40], [1, 1, 3, 3]],
                        np.float32)


def check_decode(heatmaps, device, tolerance=1e-3, kernel=11):
    """decode_heatmaps_torch vs decode_heatmaps: scores equal, keypoints within `tolerance` image px
    and within 1e-4 heatmap px (the boxes map one heatmap pixel to 0.4 .. 17 image px at 64x48)."""
    center, scale = boxes_to_center_scale(DECODE_BOXES[:len(heatmaps)])
    want_kp, want_scores = decode_heatmaps(heatmaps, center, scale, kernel)
    kp, scores = decode_heatmaps_torch(torch.from_numpy(heatmaps).to(device), center, scale, kernel)
    assert kp.dtype == np.float32 and scores.dtype == np.float32
    assert np.array_equal(scores, want_scores)
    error = np.abs(kp - want_kp)
    heatmap_px = scale[:, None, :] * 200 / (np.array(heatmaps.shape[:1:-1]) - 1)  # image px per heatmap px
    assert error.max() < tolerance, error.max()
    assert (error / heatmap_px).max() < 1e-4, (error / heatmap_px).max()
    return error.max()


def test_decode_equals_numpy_on_subpixel_gaussians(device):
    rng = np.random.default_rng(0)
    truth = np.stack([rng.uniform(0, 47, (5, 17)), rng.uniform(0, 63, (5, 17))], axis=-1)
    heatmaps = np.stack([[gaussian_heatmap(64, 48, x, y) for x, y in person] for person in truth])
    check_decode(heatmaps, device)  # measured on CPU: 6e-5 image px at most


def test_batches_decoded_as_they_come_equal_one_decode(device):
    """BatchDecoder (the GPU path's decoding, batch by batch behind the network) gives decode_heatmaps_torch's
    keypoints and scores for the whole call, whatever the batches (an empty one among them)."""
    heatmaps = torch.from_numpy(np.concatenate([noisy_heatmaps(4), noisy_heatmaps(5)])).to(device)  # 10 people
    center, scale = boxes_to_center_scale(np.concatenate([DECODE_BOXES, DECODE_BOXES]))
    want_kp, want_scores = decode_heatmaps_torch(heatmaps, center, scale)
    decoder = BatchDecoder(center, scale)
    for start, stop in [(0, 4), (4, 4), (4, 9), (9, 10)]:
        decoder.add(start, heatmaps[start:stop].half() if start == 4 else heatmaps[start:stop])
    kp, scores = decoder.result()
    assert kp.dtype == np.float32 and kp.shape == want_kp.shape and scores.shape == want_scores.shape
    half = slice(4, 9)  # that batch came in half precision: its own decode of the rounded maps
    want_kp[half], want_scores[half] = decode_heatmaps_torch(heatmaps[half].half(), center[half], scale[half])
    assert np.array_equal(kp, want_kp) and np.array_equal(scores, want_scores)
    empty = BatchDecoder(np.zeros((0, 2)), np.zeros((0, 2)))
    empty.add(0, torch.zeros((0, 17, 64, 48), device=device))
    assert empty.result()[0].shape == (0, 17, 2)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decode_equals_numpy_on_noisy_heatmaps(device, seed):
    # measured on CPU: at most 1.2e-4 image px (3e-5 heatmap px) for noise sigma 0.02; blur sums
    # differ from cv2's by ~5e-8 (float32 summation order). With noise 10x that, where the log map
    # is nearly flat, the Newton step amplifies this to ~5e-3 heatmap px: cv2 itself is no closer
    # to a float64 blur.
    check_decode(noisy_heatmaps(seed), device)


@pytest.mark.parametrize("shape", [(64, 48), (6, 6), (4, 3), (1, 3)])
@pytest.mark.parametrize("kernel", [3, 11, 17])
def test_blur_at_the_peaks_equals_cv2s_full_blur(device, shape, kernel):
    # maps smaller than the blur's reach too: reflect-101 folds more than once there, as in cv2
    h, w = shape
    maps = np.random.default_rng(h * w + kernel).random((40, h, w), dtype=np.float32)
    x = np.arange(40) % w  # every column and row, the edges included
    y = (np.arange(40) * 7) % h
    full = np.pad(np.stack([cv2.GaussianBlur(m, (kernel, kernel), 0) for m in maps]), ((0, 0), (1, 1), (1, 1)),
                  mode="edge")
    want = np.stack([full[i, y[i]:y[i] + 3, x[i]:x[i] + 3] for i in range(40)])
    got = _blurred_neighbourhood(torch.from_numpy(maps).to(device), torch.from_numpy(x).to(device),
                                 torch.from_numpy(y).to(device), kernel)
    assert np.abs(got.cpu().numpy() - want).max() < 1e-6  # float32 summation order only


def test_decode_other_kernels_and_small_maps(device):
    heatmaps = noisy_heatmaps(6)
    for kernel in (3, 9, 17):  # measured on CPU: 4e-5, 1e-4, 4e-4 image px
        check_decode(heatmaps, device, tolerance=2e-3, kernel=kernel)
    rng = np.random.default_rng(7)
    small = np.stack([[gaussian_heatmap(8, 6, x, y, sigma=1.5) for x, y in rng.uniform(0, [5, 7], (5, 2))]
                      for _ in range(2)])
    # here one heatmap pixel is up to 160 image px: measured 5.5e-4 image px (CPU), 1.1e-3 (CUDA)
    check_decode(small, device, tolerance=1e-2)


def test_decode_degenerate_and_invalid_maps(device):
    heatmaps = np.zeros((1, 4, 64, 48), np.float32)
    heatmaps[0, 0] = 1e-4  # clipped to a constant: no curvature, keeps the integer peak
    heatmaps[0, 0, 20, 30] = 2e-4
    heatmaps[0, 1] = np.tile(np.linspace(0.5, 1, 48, dtype=np.float32), (64, 1))  # a slope
    heatmaps[0, 2] = -1  # score <= 0: invalid, left at the crop's corner
    heatmaps[0, 3] = gaussian_heatmap(64, 48, 0.0, 63.0)  # peak in a corner (edge padding)
    check_decode(heatmaps, device)
    center, scale = boxes_to_center_scale(DECODE_BOXES[:1])
    kp, scores = decode_heatmaps_torch(torch.from_numpy(heatmaps).to(device), center, scale)
    assert scores[0, 2] <= 0 and np.isfinite(kp).all()


def test_decode_half_precision_heatmaps(device):
    heatmaps = noisy_heatmaps(4)
    half = torch.from_numpy(heatmaps).half()
    center, scale = boxes_to_center_scale(DECODE_BOXES)
    want_kp, want_scores = decode_heatmaps(half.float().numpy(), center, scale)
    kp, scores = decode_heatmaps_torch(half.to(device), torch.from_numpy(center), torch.from_numpy(scale))
    assert np.array_equal(scores, want_scores)
    assert np.abs(kp - want_kp).max() < 1e-3


def test_decode_empty(device):
    kp, scores = decode_heatmaps_torch(torch.zeros((0, 17, 64, 48), device=device), np.zeros((0, 2)), np.zeros((0, 2)))
    assert kp.shape == (0, 17, 2) and scores.shape == (0, 17)


def test_flip_back_equals_numpy(device):
    heatmaps = np.random.default_rng(5).random((3, 17, 64, 48), dtype=np.float32)
    flip_index = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
    got = flip_back_torch(torch.from_numpy(heatmaps).to(device), flip_index)
    assert torch.equal(got.cpu(), torch.from_numpy(np.ascontiguousarray(flip_back(heatmaps, flip_index))))
    got = flip_back_torch(torch.from_numpy(heatmaps).to(device), torch.from_numpy(flip_index).to(device))
    assert np.array_equal(got.cpu().numpy(), flip_back(heatmaps, flip_index))
    assert flip_back_torch(torch.zeros((0, 17, 64, 48), device=device), flip_index).shape == (0, 17, 64, 48)
