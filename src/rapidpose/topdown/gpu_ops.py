"""Torch versions of the crop warp and of the heatmap decoding, for keeping the work on one device.

Each image goes to the device once; crops, network inputs and heatmaps stay there until the final
keypoints. The numbers are those of the numpy/cv2 versions in geometry.py and decode.py:

- warp_crops_torch samples exactly the image points cv2.warpAffine samples (the inverse affine in
  float64, bilinear, constant 0 border) and, with round_like_cv2, rounds to integers before the
  normalisation as the uint8 crop of the official pipeline does. Against cv2 >= 4.11 (float
  bilinear) the rounded crops are equal except at about 1 value in 10^4, off by 1 (a tie at .5
  falling the other way); older cv2 (1/32 px fixed-point bilinear) differs from exact bilinear by
  up to a few levels at a few percent of the values.
- decode_heatmaps_torch is argmax + DARK-UDP + the UDP inverse of decode.py. The blur is only
  needed at the 3x3 neighbourhood of each peak, so it is computed there, on the device, as the
  separable 11-tap Gaussian over reflect-101 indices, with element-wise products and sums in float32
  (no conv or matmul, so TF32 settings cannot touch it); the Newton step and the UDP inverse are
  decode.py's own, in float64 on the host.

Everything is batched over people and keypoints; there is no Python loop over either.
"""
from __future__ import annotations

import functools
import os
import weakref
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rapidpose.topdown.decode import BLUR_KERNEL, keypoints_from_peaks, log_of_blurred
from rapidpose.topdown.geometry import INPUT_SIZE, MEAN, STD

__all__ = ["gaussian_kernel_1d", "warp_crops_torch", "warp_crops_batch", "warp_crops_with", "crop_regions",
           "sampling_inverses", "i420_to_rgb", "PinnedUploader", "decode_heatmaps_torch", "peaks_on_device",
           "keypoints_from_peak_rows", "BatchDecoder", "flip_back_torch"]


def _float64(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_tensor(x, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Crops


def inverse_affines(m: np.ndarray) -> np.ndarray:
    """(N, 2, 3) forward affines -> their inverses, with the formula cv2.warpAffine uses (float64)."""
    m = np.asarray(m, np.float64).reshape(-1, 2, 3)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    with np.errstate(divide="ignore"):
        inv_det = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a12, a21, a22 = e * inv_det, -b * inv_det, -d * inv_det, a * inv_det
    return np.stack([np.stack([a11, a12, -a11 * c - a12 * f], -1),
                     np.stack([a21, a22, -a21 * c - a22 * f], -1)], 1)


def _sampled_size(hw) -> np.ndarray:
    """The size grid_sample sees: _image_to_nchw pads a 1-pixel side to 2."""
    return np.maximum(np.asarray(hw, np.float64), 2.0)


def sampling_inverses(matrices, image_hw: np.ndarray) -> np.ndarray:
    """(N, 2, 3) float64: crop pixel (u, v, 1) -> grid_sample's normalised image point, per crop.

    With align_corners=True, -1 and +1 are the centres of the first and last image pixels, so the
    normalisation x -> x * 2 / (w - 1) - 1 is folded into the inverse affine. image_hw: (N, 2)
    height and width of the image each crop is taken from.
    """
    inv = inverse_affines(matrices)
    hw = _sampled_size(image_hw).reshape(-1, 2)
    inv[:, 0] *= (2.0 / (hw[:, 1] - 1))[:, None]
    inv[:, 1] *= (2.0 / (hw[:, 0] - 1))[:, None]
    inv[:, :, 2] -= 1.0
    return inv


def crop_regions(images: Sequence[np.ndarray], matrices: np.ndarray, counts: Sequence[int], output_size=INPUT_SIZE):
    """Per image, the view of the part its crops read, and the matrices moved to that part's origin.

    Warping the regions with the moved matrices gives the crops of the whole images (up to float32
    rounding of the sampling points), from a fraction of the bytes: one small person in a 1080p
    frame reads a few percent of it. An image whose crops read no pixel becomes one black pixel.
    The part is the bounding box of the parallelograms the crops' corners map to (bilinear reads the next
    pixel too), clipped to the image; all crops at once, then a slice an image.
    """
    moved = np.array(matrices, np.float64).reshape(-1, 2, 3)
    counts = np.asarray(counts, np.int64)
    w_out, h_out = output_size
    corners = np.array([[0, 0, 1], [w_out - 1, 0, 1], [0, h_out - 1, 1], [w_out - 1, h_out - 1, 1]], np.float64)
    points = inverse_affines(moved) @ corners.T  # (N, 2, 4): affine maps send the crop to a parallelogram
    views = [image[:0, :0] for image in images]
    used = np.flatnonzero(counts)
    if not len(used):
        return views, moved
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[used]
    low = np.floor(np.minimum.reduceat(points.min(axis=2), starts))
    high = np.floor(np.maximum.reduceat(points.max(axis=2), starts)) + 2
    shift = np.zeros((len(images), 2), np.float64)
    for i, lo, hi in zip(used, low.astype(np.int64), high.astype(np.int64)):
        h, w = images[i].shape[:2]
        x0, x1 = min(max(int(lo[0]), 0), w), min(max(int(hi[0]), 0), w)
        y0, y1 = min(max(int(lo[1]), 0), h), min(max(int(hi[1]), 0), h)
        if x1 <= x0 or y1 <= y0:
            views[i] = np.zeros((1, 1) + images[i].shape[2:], images[i].dtype)
            continue
        views[i] = images[i][y0:y1, x0:x1]
        shift[i] = x0, y0
    # region pixel p = image pixel p + (x0, y0)
    moved[:, :, 2] += np.einsum("nij,nj->ni", moved[:, :, :2], np.repeat(shift, counts, axis=0))
    return views, moved


@functools.lru_cache(maxsize=16)
def _crop_pixels(w_out: int, h_out: int, device: torch.device, dtype: torch.dtype):
    return (torch.arange(w_out, device=device, dtype=dtype), torch.arange(h_out, device=device, dtype=dtype))


def _sampling_grid(inverse: torch.Tensor, output_size) -> torch.Tensor:
    """(N, H_out, W_out, 2) float32 grid_sample points of crops from their sampling_inverses.

    One float64 broadcast sum per coordinate, rounded once to float32.
    """
    w_out, h_out = output_size
    u, v = _crop_pixels(w_out, h_out, inverse.device, inverse.dtype)
    along_u = inverse[:, None, None, :, 0] * u.view(1, 1, w_out, 1)  # (N, 1, W_out, 2)
    along_v = inverse[:, None, None, :, 1] * v.view(1, h_out, 1, 1) + inverse[:, None, None, :, 2]  # (N, H_out, 1, 2)
    return (along_u + along_v).to(torch.float32)


def _image_to_nchw(image) -> torch.Tensor:
    """(H, W, 3) uint8 image -> (1, 3, H', W') float32, with a zero row/column added to a 1-pixel side.

    The zero padding changes nothing that is sampled (the border is 0 anyway); it only keeps the
    align_corners=True normalisation, which divides by (size - 1), defined.
    """
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C); got shape {tuple(image.shape)}")
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    h, w = x.shape[-2:]
    if h == 1 or w == 1:
        x = F.pad(x, (0, int(w == 1), 0, int(h == 1)))
    return x


@functools.lru_cache(maxsize=16)
def _channel_constant(values: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1, 1)


def _normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(3, N, H, W) values in 0..255 -> network input, in place, with the float32 steps of normalize_crops."""
    mean = _channel_constant(tuple(np.asarray(mean, np.float32).ravel().tolist()), x.device)
    std = _channel_constant(tuple(np.asarray(std, np.float32).ravel().tolist()), x.device)
    return x.mul_(float(np.float32(1 / 255.0))).sub_(mean).div_(std)


@torch.no_grad()
def warp_crops_with(images: Sequence, inverse: torch.Tensor, counts: Sequence[int], output_size=INPUT_SIZE,
                    mean=MEAN, std=STD, round_like_cv2: bool = True, dtype=torch.float32) -> torch.Tensor:
    """Crops (sum(counts), 3, H, W) of images already on the device, from their sampling_inverses
    (a tensor there): one grid for all crops, one grid_sample per image, one normalisation.

    round_like_cv2 rounds the sampled values to integers before normalising, like the uint8 crop of
    geometry.warp_crops + normalize_crops. With mean=None the crops stay in 0..255.
    """
    w_out, h_out = output_size
    grid = _sampling_grid(inverse, output_size)
    parts, start = [], 0
    for image, count in zip(images, counts):
        if count:
            x = _image_to_nchw(image)
            part = F.grid_sample(x, grid[start:start + count].view(1, -1, w_out, 2), mode="bilinear",
                                 padding_mode="zeros", align_corners=True)
            parts.append(part.view(x.shape[1], count, h_out, w_out))  # channel-major, as grid_sample writes
        start += count
    if not parts:
        return torch.zeros((0, 3, h_out, w_out), dtype=dtype, device=inverse.device)
    raw = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if round_like_cv2:
        raw = raw.round_().clamp_(0, 255)  # cv2 writes a uint8 crop (values exactly at .5 are rare)
    if mean is not None:
        raw = _normalize_(raw, mean, std)
    return raw.transpose(0, 1).to(dtype, memory_format=torch.contiguous_format)


def _check_counts(images, matrices, counts) -> list[int]:
    counts = [int(c) for c in counts]
    if len(counts) != len(images):
        raise ValueError(f"{len(images)} images but {len(counts)} counts")
    if sum(counts) != len(matrices):
        raise ValueError(f"counts add up to {sum(counts)} but there are {len(matrices)} matrices")
    return counts


@torch.no_grad()
def warp_crops_batch(images: Sequence, matrices, counts: Sequence[int], output_size=INPUT_SIZE,
                     mean=MEAN, std=STD, round_like_cv2: bool = True, dtype=torch.float32) -> torch.Tensor:
    """All crops of several RGB uint8 images (H, W, 3) in one tensor (sum(counts), 3, H, W).

    matrices: (N, 2, 3) image -> crop affines (as geometry.udp_matrices gives), the crops of
    images[0] first (counts[0] of them), then those of images[1], ... Crop pixel (u, v) takes the
    bilinear sample of image point M^-1 (u, v) (pixel-index coordinates, outside the image is 0),
    as cv2.warpAffine does. Images may differ in size and live on any torch device.
    """
    counts = _check_counts(images, matrices, counts)
    if isinstance(matrices, torch.Tensor):
        matrices = matrices.detach().cpu().numpy()
    sizes = np.repeat(np.array([tuple(img.shape[:2]) for img in images], np.float64).reshape(-1, 2), counts, axis=0)
    device = images[0].device if images and isinstance(images[0], torch.Tensor) else torch.device("cpu")
    inverse = torch.from_numpy(sampling_inverses(matrices, sizes)).to(device, _float64(device))
    return warp_crops_with(images, inverse, counts, output_size, mean, std, round_like_cv2, dtype)


@torch.no_grad()
def warp_crops_torch(image, matrices, output_size=INPUT_SIZE, mean=MEAN, std=STD,
                     round_like_cv2: bool = True) -> torch.Tensor:
    """Network input (N, 3, H, W) float32 from one RGB uint8 image (H, W, 3): warp_crops_batch of one image."""
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.ascontiguousarray(image))
    return warp_crops_batch([image], matrices, [len(matrices)], output_size, mean, std, round_like_cv2)


# cv2's YUV -> RGB (BT.601, limited range) in its own 20-bit fixed point, so both give the same bytes
_Y_GAIN, _V_TO_R, _U_TO_G, _V_TO_G, _U_TO_B = 1220542, 1673527, -409993, -852492, 2116026


def i420_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """(B, H*3/2, W) uint8 I420 frames (PyAV's yuv420p layout) -> (B, 3, H, W) float32 RGB in 0..255,
    equal to cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420): each chroma sample serves its 2x2 pixels.

    On a CUDA GPU with Triton, one kernel reads each byte once and writes the floats: the torch ops
    below make five frame-sized int32 temporaries (3 GB for 32 frames of 1080p) in a dozen launches."""
    b, rows, w = yuv.shape
    h = rows * 2 // 3
    kernel = _i420_kernel() if yuv.is_cuda else None
    if kernel is not None:
        yuv = yuv.contiguous()
        rgb = torch.empty((b, 3, h, w), dtype=torch.float32, device=yuv.device)
        if b and h and w:
            kernel(yuv, rgb, w, h)
        return rgb
    y = (yuv[:, :h].to(torch.int32) - 16).clamp_(min=0) * _Y_GAIN + (1 << 19)
    chroma = yuv[:, h:].reshape(b, 2, h // 2, w // 2).to(torch.int32) - 128
    chroma = chroma.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    u, v = chroma[:, 0], chroma[:, 1]
    rgb = torch.stack([y + _V_TO_R * v, y + _U_TO_G * u + _V_TO_G * v, y + _U_TO_B * u], dim=1)
    return (rgb >> 20).clamp_(0, 255).to(torch.float32)


_I420_BLOCK = 1024  # pixels a program


@functools.lru_cache(maxsize=None)
def _i420_kernel():
    """i420_to_rgb's Triton kernel (None without Triton): the same integer arithmetic, pixel by pixel."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def i420_kernel(src, dst, width, height, y_gain: tl.constexpr, v_to_r: tl.constexpr, u_to_g: tl.constexpr,
                    v_to_g: tl.constexpr, u_to_b: tl.constexpr, BLOCK: tl.constexpr):
        pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        b = tl.program_id(1).to(tl.int64)
        area = width * height
        inside = pixel < area
        row, col = pixel // width, pixel % width
        frame = src + b * (area + area // 2)
        chroma = (row // 2) * (width // 2) + col // 2
        y = tl.load(frame + pixel, mask=inside, other=0).to(tl.int32)
        u = tl.load(frame + area + chroma, mask=inside, other=0).to(tl.int32) - 128
        v = tl.load(frame + area + area // 4 + chroma, mask=inside, other=0).to(tl.int32) - 128
        y = tl.maximum(y - 16, 0) * y_gain + (1 << 19)
        out = dst + b * 3 * area + pixel
        tl.store(out, tl.minimum(tl.maximum((y + v_to_r * v) >> 20, 0), 255).to(tl.float32), mask=inside)
        tl.store(out + area, tl.minimum(tl.maximum((y + u_to_g * u + v_to_g * v) >> 20, 0), 255).to(tl.float32),
                 mask=inside)
        tl.store(out + 2 * area, tl.minimum(tl.maximum((y + u_to_b * u) >> 20, 0), 255).to(tl.float32), mask=inside)

    return functools.partial(_launch, i420_kernel)


def _launch(kernel, yuv, rgb, width, height):
    grid = (-(-height * width // _I420_BLOCK), len(yuv))
    kernel[grid](yuv, rgb, width, height, _Y_GAIN, _V_TO_R, _U_TO_G, _V_TO_G, _U_TO_B, BLOCK=_I420_BLOCK)


THREADED_COPY_BYTES = 1 << 20  # smaller uploads take longer to split over threads than to do on one
COPY_THREADS = min(8, os.cpu_count() or 1)


@functools.cache
def _copy_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="rapidpose-copy")


def _copy_each(pairs) -> None:
    for destination, source in pairs:
        np.copyto(destination, source)


def copy_arrays(pairs) -> None:
    """np.copyto(destination, source) for each pair. Where the pairs hold 1 MB or more in all (a chunk's
    image regions, ~1 MB an image of a 720p photo's people), shared by up to 8 Python threads (numpy lets the
    GIL go while it copies): a call's first network batch waits for these regions to reach the pinned buffer.
    On the H200 host a chunk of 10.5 MB took 0.61 ms so against 1.4 on one thread, and 0.64 with every core
    busy. Not torch's copy, which takes 0.27 ms on an idle host but waits on its OpenMP threads: with every
    core busy (decoding processes, compile workers) it took 88 ms. Bands of rows smaller than an image's
    region only added hand-offs between threads (benchmarks/pinned_copy.py, docs/benchmarks.md). Smaller
    uploads (one person's region) are copied on the calling thread, which wakes no others."""
    pairs = list(pairs)
    if sum(source.nbytes for _, source in pairs) < THREADED_COPY_BYTES:
        return _copy_each(pairs)
    shares = [pairs[i::COPY_THREADS] for i in range(COPY_THREADS)]
    for done in [_copy_pool().submit(_copy_each, share) for share in shares if share]:
        done.result()


class PinnedUploader:
    """Copies numpy arrays to a GPU through reused pinned host buffers, without waiting for the copy.

    Pageable copies run at a fraction of the bus's speed and block; with two buffers in turn, the
    host fills one while the other's copy (and the GPU work queued after it) is still running. The copies
    run on a stream of their own, so they overlap the work already queued (the previous batch's network)
    instead of waiting behind it; the caller's stream waits for them before it uses the tensors. Arrays
    that are page-locked already (pinned_empty) go straight from where they are.
    On a CPU device the arrays only become contiguous tensors (which lets tests run this path).
    """

    ALIGN = 64

    def __init__(self, device, buffers: int = 2):
        self.device = torch.device(device)
        self._buffers: list = [None] * buffers
        self._done: list = [None] * buffers
        self._turn = 0
        self._stream = None  # the copies' own CUDA stream, made on first use

    @classmethod
    def layout(cls, sizes: Sequence[int]) -> tuple[list[int], int]:
        """Where arrays of these byte sizes lie in one upload (each start aligned to ALIGN), and its size."""
        offsets, total = [], 0
        for size in sizes:
            offsets.append(total)
            total += -(-size // cls.ALIGN) * cls.ALIGN
        return offsets, total

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The arrays on the device, each a view of one upload (layout)."""
        if self.device.type != "cuda":
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        on_device = self.upload(arrays)
        offsets, _ = self.layout([a.nbytes for a in arrays])
        return [on_device[start:start + a.nbytes].view(_torch_dtype(a.dtype)).view(a.shape)
                for a, start in zip(arrays, offsets)]

    def upload(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """The arrays' bytes, C-ordered, in one uint8 tensor on the CUDA device, as layout places them."""
        offsets, total = self.layout([a.nbytes for a in arrays])
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        caller = torch.cuda.current_stream(self.device)
        if all(_PINNED.get(id(a)) is a for a in arrays):  # pinned_empty's: no staging
            with torch.cuda.stream(self._stream):
                on_device = torch.empty(total, dtype=torch.uint8, device=self.device)
                for a, start in zip(arrays, offsets):
                    on_device[start:start + a.nbytes].copy_(a.base.view(-1).view(torch.uint8), non_blocking=True)
        else:
            slot = self._turn
            self._turn = (slot + 1) % len(self._buffers)
            if self._done[slot] is not None:
                self._done[slot].synchronize()  # its previous copy has left the buffer
            if self._buffers[slot] is None or self._buffers[slot].numel() < total:
                self._buffers[slot] = torch.empty(max(total, 1 << 20), dtype=torch.uint8, pin_memory=True)
            staging = self._buffers[slot].numpy()
            # strided views (an image's region) go straight into the pinned buffer
            copy_arrays((staging[start:start + a.nbytes].view(a.dtype).reshape(a.shape), a)
                        for a, start in zip(arrays, offsets))
            with torch.cuda.stream(self._stream):
                on_device = self._buffers[slot][:total].to(self.device, non_blocking=True)
            self._done[slot] = torch.cuda.Event()
            self._done[slot].record(self._stream)
        caller.wait_stream(self._stream)
        on_device.record_stream(caller)  # made on the copies' stream, used on the caller's: not freed early
        return on_device


_PINNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> pinned_empty's arrays alive


def pinned_empty(shape, dtype=np.uint8) -> np.ndarray:
    """An uninitialised array in page-locked host memory, which PinnedUploader sends to the GPU as it is
    (no staging copy). From torch's caching host allocator: the memory is reused once the array is gone
    (and any copy from it has finished), without new page faults. (Known by identity: asking CUDA
    whether memory is page-locked costs about a millisecond.)"""
    array = torch.empty(tuple(shape), dtype=_torch_dtype(np.dtype(dtype)), pin_memory=True).numpy()
    _PINNED[id(array)] = array
    return array


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


# ---------------------------------------------------------------------------------------------
# Decoding


# cv2 (4.x and later) uses these fixed kernels for ksize <= 9 when sigma is derived from the size
_SMALL_GAUSSIANS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
                    9: [0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875, 0.1171875,
                        0.05078125, 0.015625]}


def gaussian_kernel_1d(ksize: int = BLUR_KERNEL) -> np.ndarray:
    """The float32 kernel of cv2.getGaussianKernel(ksize, 0): sigma = 0.3 ((ksize - 1) / 2 - 1) + 0.8."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"the blur kernel size must be odd and positive; got {ksize}")
    if ksize in _SMALL_GAUSSIANS:
        return np.array(_SMALL_GAUSSIANS[ksize], np.float32)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    taps = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (taps / taps.sum()).astype(np.float32)  # float64 taps and sum, rounded once


def _reflect101(p: np.ndarray, n: int) -> np.ndarray:
    """cv2's BORDER_REFLECT_101 index for any length (torch's 'reflect' padding, without its size limit)."""
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    q = np.remainder(p, period)
    return np.where(q >= n, period - q, q)


@functools.lru_cache(maxsize=64)
def _blur_tables(h: int, w: int, ksize: int, device: torch.device):
    """Per peak row/column: the indices each tap of the blur reads for the 3 rows/columns DARK uses.

    For a peak at column x, DARK reads the blurred map at columns clamp(x-1..x+1) (the edge padding
    of its finite differences); blurring column c reads columns reflect101(c - r .. c + r).
    Returns (kernel (k,), rows (h, 3, k) premultiplied by w, cols (w, 3, k)) on the device.
    """
    r = ksize // 2
    taps = np.arange(-r, r + 1)

    def table(n):
        near = np.clip(np.arange(n)[:, None] + np.arange(-1, 2), 0, n - 1)  # (n, 3)
        return _reflect101(near[:, :, None] + taps, n)  # (n, 3, k)

    kernel = torch.from_numpy(gaussian_kernel_1d(ksize)).to(device)
    return kernel, torch.from_numpy(table(h) * w).to(device), torch.from_numpy(table(w)).to(device)


def _blurred_neighbourhood(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ksize: int) -> torch.Tensor:
    """The Gaussian-blurred maps (B, H, W) at the 3x3 pixels around (x, y), edge-clamped: (B, 3, 3).

    Equal to blurring the whole map (horizontal pass, then vertical, reflect-101 border) and reading
    the edge-padded 3x3 patch, but computed only where DARK looks.
    """
    b, h, w = maps.shape
    kernel, row_table, col_table = _blur_tables(h, w, ksize, maps.device)
    # raw values at rows rows[a, s], columns cols[c, t] -> (B, 3, k, 3, k)
    flat = row_table[y][:, :, :, None, None] + col_table[x][:, None, None, :, :]
    patch = maps.reshape(b, h * w).gather(1, flat.view(b, -1)).view(b, 3, ksize, 3, ksize)
    rows = (patch * kernel).sum(-1)  # horizontal pass: (B, 3, k, 3)
    return (rows * kernel[:, None]).sum(2)  # vertical pass: (B, 3, 3), [dy, dx]


@torch.no_grad()
def decode_heatmaps_torch(heatmaps: torch.Tensor, center, scale,
                          kernel: int = BLUR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps on any device -> image keypoints (N, K, 2) and scores (N, K), float32 numpy.

    decode.decode_heatmaps with the heavy part on the heatmaps' device: argmax and the blurred 3x3
    patch around each peak (peaks_on_device). Those come back in one small copy; the DARK step and the
    UDP inverse (keypoints_from_peak_rows) run on the host in float64, a few vectorised numpy operations
    where the device would need dozens of tiny kernel launches.
    """
    n, k, h, w = heatmaps.shape
    if n == 0 or k == 0:
        return np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.float32)
    return keypoints_from_peak_rows(peaks_on_device(heatmaps, kernel).cpu().numpy(), (n, k, h, w), center, scale)


def peaks_on_device(heatmaps: torch.Tensor, kernel: int = BLUR_KERNEL) -> torch.Tensor:
    """(N, K, H, W) heatmaps, N and K not 0 -> (N * K, 11) float32 rows on their device: each map's maximum,
    its index (exact in float32 for maps under 2^24 pixels) and the 9 values of the blurred 3x3 patch around it."""
    heatmaps = heatmaps.to(torch.float32)
    n, k, h, w = heatmaps.shape
    scores, idx = heatmaps.reshape(n * k, h * w).max(dim=1)
    ix, iy = idx % w, torch.div(idx, w, rounding_mode="floor")
    patch = _blurred_neighbourhood(heatmaps.reshape(n * k, h, w), ix, iy, kernel)
    return torch.cat([scores[:, None], idx[:, None].to(torch.float32), patch.reshape(-1, 9)], dim=1)


def keypoints_from_peak_rows(rows: np.ndarray, shape, center, scale) -> tuple[np.ndarray, np.ndarray]:
    """peaks_on_device's rows (a numpy copy) of heatmaps of this (N, K, H, W) shape -> image keypoints
    (N, K, 2) and scores (N, K), float32: the DARK step and the UDP inverse, in float64 on the host."""
    n, k, h, w = shape
    scores = rows[:, 0].reshape(n, k)
    flat = rows[:, 1].astype(np.int64)
    coords = np.stack([flat % w, flat // w], axis=-1).astype(np.float32).reshape(n, k, 2)
    log_patch = log_of_blurred(rows[:, 2:].reshape(-1, 3, 3))
    return keypoints_from_peaks(coords, scores, log_patch, center, scale, (w, h)), scores


class BatchDecoder:
    """Decodes network batches as they are queued, so that the host decodes one while the GPU runs the next.

    add(start, heatmaps) queues a batch's peaks_on_device behind its network and a copy of them into
    page-locked host memory; the host decodes a batch once its copy has landed (decoding what has landed at
    every add, the rest in result). Only keypoints and scores outlive a batch: the heatmaps of a call are
    not kept on the device together. On other devices a batch is decoded at once.
    """

    def __init__(self, center, scale, kernel: int = BLUR_KERNEL):
        self.center, self.scale, self.kernel = np.asarray(center), np.asarray(scale), kernel
        self.keypoints = self.scores = None
        self._pending = []  # (start, shape, host rows, CUDA event), oldest first

    def add(self, start: int, heatmaps: torch.Tensor) -> None:
        n, k, h, w = heatmaps.shape
        if self.keypoints is None:  # the first batch tells the keypoint count
            total = len(self.center)
            self.keypoints, self.scores = np.zeros((total, k, 2), np.float32), np.zeros((total, k), np.float32)
        if n == 0 or k == 0:
            return
        rows = peaks_on_device(heatmaps, self.kernel)
        if not rows.is_cuda:
            self._decode(start, heatmaps.shape, rows.numpy())
            return
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self._pending.append((start, heatmaps.shape, host, landed))
        while self._pending and self._pending[0][3].query():
            self._finish_oldest()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) and scores (N, K) of every batch added (None before the first)."""
        while self._pending:
            self._finish_oldest()
        return self.keypoints, self.scores

    def _finish_oldest(self) -> None:
        start, shape, host, landed = self._pending.pop(0)
        landed.synchronize()
        self._decode(start, shape, host.numpy())

    def _decode(self, start: int, shape, rows: np.ndarray) -> None:
        stop = start + shape[0]
        self.keypoints[start:stop], self.scores[start:stop] = keypoints_from_peak_rows(
            rows, shape, self.center[start:stop], self.scale[start:stop])


@torch.no_grad()
def flip_back_torch(heatmaps: torch.Tensor, flip_index) -> torch.Tensor:
    """Heatmaps of mirrored crops -> heatmaps of the originals: swap left/right channels, mirror x."""
    index = _as_tensor(flip_index, heatmaps.device, torch.long)
    return heatmaps.index_select(1, index).flip(-1)
