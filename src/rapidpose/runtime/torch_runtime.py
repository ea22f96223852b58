"""The PyTorch backend: fp32/fp16/bf16/fp8, optional torch.compile, CUDA graphs per batch size.

`run(tensor) -> tensor` keeps everything on the device (the GPU pipeline); `__call__(numpy)`
is the same for numpy crops.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import threading

import numpy as np

from rapidpose.errors import InputError, check_choice, require
from rapidpose.skeletons import skeleton_for

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "fp8")
GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RECOMPILE_LIMIT = 8 * len(GRAPH_BATCHES)  # torch.compile's graphs of ViTPose.forward in one process: 8 runtimes' buckets

log = logging.getLogger("rapidpose")


def resolve_device(device: str) -> str:
    torch = require("torch", "torch")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for but this torch build sees no CUDA GPU: "
                         f"use --device cpu, or install a CUDA build of torch")
    if not device.startswith(("cpu", "cuda")):
        raise InputError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto")
    return device


def cpu_has_bf16() -> bool:
    torch = require("torch", "torch")
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    check_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


# One capture at a time in a process: torch.cuda.graph() starts with a device-wide synchronize and
# frees cached memory, which breaks a capture under way in another thread (the video path captures its
# detector's graphs and its network's from two threads, each when a new batch size first comes).
_CAPTURE_LOCK = threading.Lock()


def _bucket(n: int) -> int | None:
    """The batch size of the graph that runs a batch of n (n padded into it); None past the largest."""
    return next((b for b in GRAPH_BATCHES if b >= n), None)


class CudaGraph:
    """One captured forward pass at a fixed input shape; smaller batches are padded into it.
    `model` returns a tensor or a list of tensors (the graph's own buffers, overwritten by the next call)."""

    def __init__(self, model, shape: tuple, dtype, device, pool=None):
        torch = require("torch", "torch")
        with _CAPTURE_LOCK:
            self.x = torch.zeros(shape, dtype=dtype, device=device)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (cuDNN/cuBLAS choose their kernels)
                    model(self.x)
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: other threads go on meanwhile (video: the detector's thread, the pose work, the
            # drawing's pinned buffers, NVDEC); a global capture fails at the first such call of theirs.
            # A stream of its own: a failed capture leaves nothing behind on the one the next capture uses.
            with torch.cuda.graph(self.graph, pool=pool, stream=torch.cuda.Stream(device),
                                  capture_error_mode="thread_local"):
                self.y = model(self.x)

    @classmethod
    def capture(cls, model, shape: tuple, dtype, device, pool, what: str) -> "CudaGraph | None":
        """A CudaGraph, or None where the capture fails (said once): that shape then runs without one.
        The caller takes a new pool after a None: the failed capture's stays marked as recording."""
        try:
            return cls(model, shape, dtype, device, pool)
        except RuntimeError as exc:  # torch's AcceleratorError is one
            log.warning("%s: capturing the CUDA graph for input %s failed (%s); that shape runs without a "
                        "graph", what, tuple(shape), str(exc).splitlines()[0])
            return None

    def __call__(self, x):
        self.x[: len(x)].copy_(x)
        self.graph.replay()
        if isinstance(self.y, (list, tuple)):
            return [y[: len(x)] for y in self.y]
        return self.y[: len(x)]


class TorchRuntime:
    def __init__(self, model, device: str = "cpu", batch_size: int = 64, precision: str = "auto",
                 compile: bool = False, cuda_graphs: bool | None = None):
        torch = self.torch = require("torch", "torch")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        self.cfg = model.cfg
        self.input_size = model.cfg.input_size
        self.num_keypoints = model.num_keypoints_of(model.dataset_index)
        self.skeleton = getattr(model, "skeleton", None) or skeleton_for(self.num_keypoints)
        on_gpu = self.device.startswith("cuda")
        if self.precision == "fp16" and not on_gpu:
            raise InputError("fp16 runs on GPUs only: on the CPU use bf16 or fp32")
        fp8 = self.precision == "fp8"
        # Triton kernels for attention, the blocks' add + norm and the head (half precision only; Windows' CUDA
        # builds have no Triton)
        fused = on_gpu and self.precision != "fp32" and importlib.util.find_spec("triton") is not None
        if fp8:
            from rapidpose.runtime.float8 import check_device, prefer_memset_free_products

            if on_gpu:
                prefer_memset_free_products()  # before check_device's product, the process's first perhaps
            check_device(self.device)
        # fc1 + GELU as one product with cuBLASLt's GELU epilogue (fp8 takes the GELU into fc2's quantization)
        gelu_epilogue = on_gpu and self.precision in ("fp16", "bf16")
        if fp8 or fused or gelu_epilogue:
            model = copy.deepcopy(model)  # its layers are replaced: the caller's model keeps its own
        # GPUs run the whole model in half precision (fp8: the blocks' matrix products in FP8, the rest in
        # bf16); CPUs keep fp32 weights under bf16 autocast, which is faster there and keeps LayerNorm and
        # softmax in fp32.
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                      "fp8": torch.bfloat16}[self.precision]
        self.autocast = self.precision == "bf16" and not on_gpu
        weights_dtype = self.dtype if on_gpu else torch.float32
        self.model = model.to(self.device, weights_dtype).eval()
        if fp8:
            from rapidpose.runtime.float8 import swap_linears

            swap_linears(self.model)
        if fused:
            from rapidpose.runtime.fused_attention import fuse_attention
            from rapidpose.runtime.fused_head import fuse_classic_heads

            fuse_attention(self.model)
            fuse_classic_heads(self.model)
        if gelu_epilogue:
            from rapidpose.runtime.fused_gelu import fuse_mlp_gelu

            fuse_mlp_gelu(self.model)
        if fused:  # the blocks' residual adds + norms (+ their FP8 quantization), one Triton kernel each
            from rapidpose.runtime.fused_norm import fuse_norms

            fuse_norms(self.model)
        if on_gpu:
            # the backbone's feature map is a channels-last view of its tokens; heads in that layout
            # let cuDNN skip two NCHW<->NHWC conversions of the 64x48 maps per batch
            for name, module in self.model.named_children():
                if name != "backbone":
                    module.to(memory_format=torch.channels_last)
        self.input_dtype = weights_dtype
        self.cuda_graphs = on_gpu if cuda_graphs is None else (cuda_graphs and on_gpu)
        self.forward = self._compiled(self.model) if compile else self.model
        if on_gpu:  # shapes are fixed per batch bucket: let cuDNN time its convolution kernels once
            torch.backends.cudnn.benchmark = True
        self._graphs: dict[int, CudaGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def _compiled(self, model):
        """torch.compile'd model: one fixed-shape graph a batch bucket under CUDA graphs, else shapes made
        dynamic after the first new one (a CPU's batches are as many as the people found)."""
        dynamo = self.torch._dynamo.config
        # past this many graphs of one function dynamo runs it uncompiled from then on, without an error; the
        # buckets alone are 9, and every runtime of a process (and every model in it) shares ViTPose.forward's
        dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
        return self.torch.compile(model, dynamic=False if self.cuda_graphs else None)

    def _graph_for(self, n: int) -> CudaGraph | None:
        bucket = _bucket(n)
        if bucket is None:
            return None
        if bucket not in self._graphs:
            self._graphs[bucket] = CudaGraph.capture(self.forward, (bucket, 3, *self.input_size[::-1]),
                                                     self.input_dtype, self.device, self._pool, "the pose network")
            if self._graphs[bucket] is None:
                self._pool = self.torch.cuda.graph_pool_handle()
        return self._graphs[bucket]

    def _forward(self, x):
        if self.cuda_graphs:
            graph = self._graph_for(len(x))
            if graph is not None:
                return graph(x)
        if self.autocast:
            with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
                return self.forward(x)
        return self.forward(x)

    def run(self, crops):
        """(N, 3, H, W) tensor (any float dtype, any device) -> (N, K, h, w) float32 tensor on the device."""
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = crops[start:start + self.batch_size].to(self.device, self.input_dtype, non_blocking=True)
                # a CUDA graph hands back its own output buffer, which its next replay overwrites: copy it out
                # (the float32 conversion is that copy, one kernel)
                outs.append(self._forward(x).to(torch.float32, memory_format=torch.contiguous_format,
                                                copy=self.cuda_graphs))
            if not outs:
                w, h = self.cfg.heatmap_size
                return torch.zeros(0, self.num_keypoints, h, w, device=self.device)
            return torch.cat(outs) if len(outs) > 1 else outs[0]

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.run(self.torch.from_numpy(np.ascontiguousarray(crops))).cpu().numpy()
