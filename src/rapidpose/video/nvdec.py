"""Video decoding on the GPU's own decoder (NVDEC), through NVIDIA's PyNvVideoCodec.

Frames arrive on the GPU as I420 tensors: the host neither decodes nor uploads them, which leaves its
cores to the mp4's encoder (benchmarks/video_speed.py on an H100 host, 1080p, no mp4: 1.5 host cores
busy against 4.8 with FFmpeg). H.264 decoding is exact: the pixels are the ones FFmpeg gives (tests/test_nvdec.py).
The decoder waits for the hardware without holding the GIL. Install with `pip install rapidpose[nvdec]`;
the GPU video path uses it when it is there (sources.FrameSource.decode_on_gpu).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Iterator


def unavailable() -> str | None:
    """Why NVDEC cannot be used in this process, or None when it can."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "there is no CUDA GPU"
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return "PyNvVideoCodec is not installed (pip install 'rapidpose[nvdec]')"
    except Exception as exc:  # noqa: BLE001 (it raises RuntimeError without the driver's video libraries)
        return f"PyNvVideoCodec cannot start: {str(exc).strip().splitlines()[0]}"
    return None


def nv12_to_i420(nv12):
    """NV12 frames (B, H*3//2, W: Y, then U and V interleaved; or one frame without B) as I420 (Y, then
    all U, then all V), in a new tensor on the same device."""
    import torch

    frames = nv12.reshape(-1, *nv12.shape[-2:])
    b, h, w = len(frames), nv12.shape[-2] * 2 // 3, nv12.shape[-1]
    out = torch.empty_like(frames)
    flat = out.view(b, -1)
    out[:, :h] = frames[:, :h]
    uv = frames[:, h:].reshape(b, h // 2, w // 2, 2)
    flat[:, w * h:w * h * 5 // 4].view(b, h // 2, w // 2).copy_(uv[..., 0])
    flat[:, w * h * 5 // 4:].view(b, h // 2, w // 2).copy_(uv[..., 1])
    return out.view(nv12.shape)


class NvdecReader:
    """The frames of a video file, decoded by NVDEC on `device` (a CUDA torch.device). Iterating gives
    (pts, I420 uint8 tensor (H*3//2, W)) in display order (the frames of one decoder call share their
    memory), ready to use on any stream (the copies out of the decoder's surfaces are waited for here).
    Opening fails with the decoder's error for a file or codec it cannot take (the caller then decodes
    on the CPU).

    PyNvVideoCodec's threaded decoder decodes ahead on a thread of its own, without the GIL, and hands
    frames over `batch` at a time: a Python thread that asked for every frame (and waited for the
    GIL after each) fed a busy pipeline 400 frames/s, where FFmpeg's frame threads gave 535."""

    def __init__(self, path: str, device, batch: int = 8):
        import PyNvVideoCodec as nvc
        import torch

        self.torch, self.device, self.batch = torch, device, batch
        index = device.index if device.index is not None else torch.cuda.current_device()
        # high priority: the copies out of the decoder do not queue behind the pose network's kernels
        self.stream = torch.cuda.Stream(device, priority=-1)
        # torch's context: the decoded surfaces must be readable by torch's kernels
        self.decoder = nvc.ThreadedDecoder(str(path), buffer_size=2 * batch, gpu_id=index,
                                           cuda_context=_primary_context(index), cuda_stream=self.stream.cuda_stream,
                                           use_device_memory=True)
        self._first = self.decoder.get_batch_frames(batch)  # a file it cannot decode fails here, not later
        if not self._first:
            self.decoder.end()
            raise RuntimeError("NVDEC decoded no frame of it")

    def __iter__(self) -> Iterator[tuple[int, object]]:
        torch = self.torch
        decoded, self._first = self._first, None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            while decoded:
                # the surfaces are the decoder's again at the next call: copied out (all of a call in
                # one tensor: two copies a call, not a frame) before that
                frames = nv12_to_i420(torch.stack([torch.from_dlpack(frame) for frame in decoded]))
                self.stream.synchronize()
                yield from zip((frame.timestamp for frame in decoded), frames)
                decoded = self.decoder.get_batch_frames(self.batch)

    def close(self) -> None:
        self.decoder.end()


@functools.lru_cache(maxsize=None)
def _primary_context(index: int) -> int:
    """The handle of device `index`'s primary CUDA context, the one torch uses (retained for good)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    for call in (cuda.cuDeviceGet(ctypes.byref(device), index), cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device)):
        if call != 0:
            raise RuntimeError(f"CUDA driver error {call} while looking up the context of GPU {index}")
    return context.value
