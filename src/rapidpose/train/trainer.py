"""The trainer: ViTPose on any COCO-format keypoint set with the official recipe (train/recipe.py).

    from rapidpose.train import TrainOptions, train
    result = train(TrainOptions("person_keypoints_train.json", "images/", "runs/mine", model="vitpose-b"))

Each step: the photos of a batch of people are decoded ahead (threads on CPUs, worker processes on GPUs),
each person gets the official augmentation (train/augment.py: flip, half-body, scale, rotation), is
warped to 256x192 with the UDP affine (OpenCV on CPUs, one grid_sample on GPUs), and gets its UDP
Gaussian targets (train/targets.py, built on the device); the loss is the official weighted MSE, the
optimiser AdamW with layer-wise lr decay, gradient clipping and the warm-up + step schedule, under
bf16 autocast on GPUs.

What a run leaves in `output`: `settings.json` (every setting used, the lr scaling said in words),
`log.jsonl` (a line per logging step: epoch, step, lr, loss, images_per_s; a line per validation: ap,
ar), `epoch_NNN.pth` after every epoch, `last.pth` (what --resume continues from), `best.pth` (the best
validation AP), `training.png` (loss and AP). Checkpoints are ordinary rapidpose checkpoints: their
keypoint set travels in them, so `load_model`, `predict`, `video`, `eval`, `export` and `quantize` take
them as they are.

Several processes (`torchrun --nproc-per-node N -m rapidpose train ...`): DistributedDataParallel,
each process a slice of every global batch; the augmentation of a person depends on the seed, the
epoch and its place in the epoch only, so N processes of batch B train as one of batch N x B.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError, RapidPoseError, check_choice

log = logging.getLogger("rapidpose")

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainOptions:
    """What `rapidpose train` takes (see the module). model: a hub name, a checkpoint, or random-s/b/l/h
    (random weights of that size: from scratch). epochs None: the recipe's 210. batch_size: people per
    step in each process. lr None: the recipe's 5e-4 at 512, scaled linearly to the global batch.
    recipe: overrides of train/recipe.Recipe's fields (e.g. {"layer_decay": 0.8})."""

    annotations: str | Path
    images: str | Path
    output: str | Path
    model: str | Path = "random-b"
    val_annotations: str | Path | None = None
    val_images: str | Path | None = None
    epochs: int | None = None
    batch_size: int = 64
    lr: float | None = None
    device: str = "auto"
    precision: str = "auto"
    freeze_backbone: bool = False
    resume: bool = False
    seed: int = 0
    log_every: int = 10
    recipe: dict = field(default_factory=dict)
    category_id: int | None = None
    max_steps: int | None = None  # stop after this many steps (benchmarks, smoke tests)
    val_every: int = 1  # validate after every this many epochs (and after the last)
    compile: bool = False  # torch.compile the training step's network (a minute to compile, then faster steps)


@dataclass
class TrainResult:
    output: Path
    steps: int
    epochs: int
    best_ap: float | None
    last_loss: float
    images_per_s: float


def train(options: TrainOptions, progress_bar: bool = True) -> TrainResult:
    """Train or fine-tune (see the module); returns where the run went and its last figures."""
    import torch

    from rapidpose.runtime.torch_runtime import resolve_device
    from rapidpose.train.data import load_keypoint_set
    from rapidpose.train.recipe import Schedule, make_optimizer, recipe_for, scaled_lr

    check_choice("precision", options.precision, PRECISIONS)
    if options.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {options.batch_size}")
    if (options.val_annotations is None) != (options.val_images is None):
        raise InputError("validation needs both --val-annotations and --val-images (or neither)")
    rank, world = _distributed()
    device = _device_for(resolve_device(options.device), rank)
    output = Path(options.output)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)

    data = load_keypoint_set(options.annotations, options.images, category_id=options.category_id)
    val = None
    if options.val_annotations is not None:
        val = load_keypoint_set(options.val_annotations, options.val_images, category_id=options.category_id)
        if list(val.skeleton.keypoints) != list(data.skeleton.keypoints):
            raise InputError(f"the validation keypoints ({val.skeleton.num_keypoints}, '{val.skeleton.name}') are "
                             f"not the training ones ({data.skeleton.num_keypoints}, '{data.skeleton.name}'): "
                             f"validate on annotations of the same keypoint set")
    if rank == 0:
        log.info("training on %s", data.summary())
        if val is not None:
            log.info("validating on %s", val.summary())

    model = _make_model(options.model, data.skeleton)
    recipe = recipe_for(model.cfg.variant, **options.recipe)
    model.backbone.set_drop_path(recipe.drop_path)
    if options.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    model.to(device).train()
    global_batch = options.batch_size * world
    lr = options.lr if options.lr is not None else scaled_lr(recipe, global_batch)
    optimizer = make_optimizer(model, recipe, global_batch)
    if options.lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = options.lr * group.get("lr_scale", 1.0)
    steps_per_epoch = max(len(data.samples) // global_batch, 1)
    epochs = options.epochs if options.epochs is not None else recipe.epochs
    schedule = Schedule(recipe, steps_per_epoch, epochs)
    precision = options.precision if options.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")

    state = _State()
    if options.resume:
        state = _resume(output / "last.pth", model, optimizer, data.skeleton)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if options.compile:
        net = torch.compile(net)

    if rank == 0:
        settings = {"options": _jsonable(asdict(options)), "recipe": recipe.to_dict(), "variant": model.cfg.variant,
                    "keypoint_set": _skeleton_meta(data.skeleton), "processes": world, "global_batch": global_batch,
                    "lr": lr, "lr_rule": (f"given: {options.lr}" if options.lr is not None else
                                          f"{recipe.lr:g} at batch {recipe.base_batch}, scaled linearly to the global "
                                          f"batch of {global_batch}: {lr:.4g}"),
                    "precision": precision, "device": str(device), "steps_per_epoch": steps_per_epoch, "epochs": epochs,
                    "schedule": schedule.describe(), "skipped": data.skipped}
        (output / "settings.json").write_text(json.dumps(settings, indent=2))
        log.info("lr %s; %s; %d steps of %d people a epoch, %d epochs, %s on %s",
                 settings["lr_rule"], schedule.describe(), steps_per_epoch, global_batch, epochs, precision, device)

    feeder = _Feeder(data, recipe, model.cfg, device, options.seed)
    from rapidpose.photos.records import JsonLines

    writer = JsonLines(output / "log.jsonl", append=options.resume) if rank == 0 else None
    last_loss, rate = float("nan"), 0.0
    total = steps_per_epoch * epochs if options.max_steps is None else min(options.max_steps, steps_per_epoch * epochs)
    bar = _bar(total, state.step, progress_bar and rank == 0)
    try:
        for epoch in range(state.epoch, epochs):
            window_start, window_people = time.perf_counter(), 0
            batches = _ahead(feeder.epoch(epoch, global_batch, rank, options.batch_size, steps_per_epoch))
            for batch in batches:
                if options.max_steps is not None and state.step >= options.max_steps:
                    break
                schedule.apply(optimizer, state.step)
                loss = _step(net, model, optimizer, batch, recipe, precision, device)
                state.step += 1
                window_people += len(batch.crops) * world
                if bar is not None:
                    bar.update(1)
                if state.step % options.log_every == 0 or state.step == total:
                    last_loss = _mean_over_processes(loss, world)
                    elapsed = time.perf_counter() - window_start
                    rate = window_people / elapsed if elapsed > 0 else 0.0
                    window_start, window_people = time.perf_counter(), 0
                    if writer is not None:
                        writer.add({"epoch": epoch + 1, "step": state.step, "lr": optimizer.param_groups[-1]["lr"],
                                    "loss": last_loss, "images_per_s": rate})
                    if bar is not None:
                        bar.set_postfix_str(f"epoch {epoch + 1}, loss {last_loss:.3g}, {rate:,.0f} people/s")
            batches.close()
            state.epoch = epoch + 1
            ap = None
            last = epoch + 1 == epochs or (options.max_steps is not None and state.step >= options.max_steps)
            if val is not None and rank == 0 and ((epoch + 1) % max(options.val_every, 1) == 0 or last):
                ap = _validate(model, val, device, epoch + 1, state.step, writer)
            if rank == 0:
                _save_epoch(output, model, optimizer, state, data.skeleton, settings, ap)
                if writer is not None:
                    _plot(writer.path, output / "training.png")
            if world > 1:
                torch.distributed.barrier()
            if options.max_steps is not None and state.step >= options.max_steps:
                break
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        feeder.close()
    if rank == 0 and feeder.unreadable:
        log.warning("%d people skipped: their images could not be read (named above)", feeder.unreadable)
    return TrainResult(output, state.step, state.epoch, state.best_ap, last_loss, rate)


# ---------------------------------------------------------------- the model

def _make_model(model, skeleton):
    """The network to train: random weights of a size (random-s/b/l/h), or a checkpoint's; a checkpoint
    whose keypoints are not the annotations' keeps its backbone and gets a fresh head."""
    from rapidpose.model.vitpose import VARIANTS, ViTPose, ViTPoseConfig
    from rapidpose.model.weights import load_model

    k = skeleton.num_keypoints
    if isinstance(model, str) and model.startswith("random-"):
        variant = model.split("-", 1)[1]
        if variant not in VARIANTS:
            raise InputError(f"unknown model size '{model}': use random-s, random-b, random-l or random-h, "
                             f"a model name or a checkpoint")
        net = ViTPose(ViTPoseConfig.from_variant(variant, num_keypoints=k))
        _init_from_scratch(net)
        log.info("training %s from random weights (the official runs start from MAE pre-training)", model)
    else:
        loaded = load_model(model, "cpu")
        if loaded.cfg.num_experts > 1:
            raise InputError(f"'{model}' is a ViTPose++ model (experts): fine-tune a plain ViTPose checkpoint")
        if loaded.cfg.num_keypoints == k:
            net = loaded
        else:
            cfg = ViTPoseConfig(**{**asdict(loaded.cfg), "num_keypoints": k})
            net = ViTPose(cfg)
            backbone = {n: p for n, p in loaded.state_dict().items() if n.startswith("backbone.")}
            net.load_state_dict(backbone, strict=False)
            log.info("'%s' predicts %d keypoints, the annotations have %d (%s): its backbone is kept, the head "
                     "starts afresh", model, loaded.cfg.num_keypoints, k, skeleton.name)
    net.skeleton = skeleton
    net.source = str(model)
    return net


def _init_from_scratch(net) -> None:
    """timm's ViT initialisation: truncated normal (std 0.02) for linear layers and the position
    embedding, zero biases, unit norms; the head's deconvolutions and 1x1 as the official head (normal
    std 0.001, zero bias)."""
    import torch
    from torch import nn

    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)) and name.startswith("keypoint_head"):
            nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    with torch.no_grad():
        nn.init.trunc_normal_(net.backbone.pos_embed, std=0.02)


# ---------------------------------------------------------------- the data

@dataclass
class _Batch:
    crops: object  # (B, 3, 256, 192) float32 tensor on the device
    targets: object  # (B, K, 64, 48)
    weights: object  # (B, K)
    ready: object = None  # on a GPU: the event after which the tensors above are made (the feeder's stream)

    def wait(self, device) -> None:
        """Make the training stream wait for this batch, and keep the batch's memory from being reused
        by the feeder's stream while the step that reads it is still queued."""
        if self.ready is None:
            return
        import torch

        stream = torch.cuda.current_stream(device)
        stream.wait_event(self.ready)
        for t in (self.crops, self.targets, self.weights):
            t.record_stream(stream)


class _Feeder:
    """Batches of augmented crops and their targets, the images decoded ahead."""

    def __init__(self, data, recipe, cfg, device, seed: int):
        self.data, self.recipe, self.cfg, self.device, self.seed = data, recipe, cfg, device, seed
        self.flip_index = data.skeleton.flip_index()
        self.upper_body = data.upper_body
        self.unreadable = 0
        self._pool = None
        self._said: set = set()
        self._lock = threading.Lock()
        self._shifts = self._centre_shifts()
        # The batches are made on a CUDA stream of their own: on the training stream their uploads and
        # warps would queue behind the step in flight (and the pageable uploads block this thread till then).
        self._stream = None
        if device.type == "cuda":
            import torch

            self._stream = torch.cuda.Stream(device)

    def epoch(self, epoch: int, global_batch: int, rank: int, batch_size: int, steps: int):
        """This process's share of each of the epoch's `steps` global batches, in order (futures of
        _Batch, or of None where none of a batch's images could be read). The order and
        every person's augmentation depend on (seed, epoch, step) only: each process draws those of the
        whole global batch (one vectorised draw) and keeps its slice, so N processes train as one."""
        n = len(self.data.samples)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        if n < global_batch:  # a set smaller than one batch: every person, each step the same set
            order = np.resize(order, global_batch)
        picks = [order[s * global_batch:(s + 1) * global_batch] for s in range(steps)]
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        images = self._reader([self.data.samples[i].image for pick in picks for i in pick[mine]])
        # Two threads make batches side by side: a batch's uploads and warps wait on copies and kernels
        # (or OpenCV) with the GIL released, and the next batch's images arrive meanwhile.
        makers = ThreadPoolExecutor(2, thread_name_prefix="rapidpose-train-batch")
        finished = False
        try:
            for s, pick in enumerate(picks):
                aug = self._augment(pick, np.random.default_rng([self.seed, epoch, s]))
                got = [next(images)[1] for _ in pick[mine]]
                yield makers.submit(self._make, pick[mine], got, _take(aug, np.arange(len(pick))[mine]))
            finished = True
        finally:
            images.close()
            # the last batches are still being made (and taken) when the epoch's generator ends;
            # an epoch left early drops the ones nobody will take
            makers.shutdown(wait=True, cancel_futures=not finished)

    def _augment(self, pick, rng):
        """The official augmentation of the people `pick` (indices into the samples), drawn at once."""
        from rapidpose.topdown.geometry import boxes_to_center_scale
        from rapidpose.train.augment import sample_augmentation

        samples = [self.data.samples[i] for i in pick]
        boxes = np.stack([s.box for s in samples])
        center, scale = boxes_to_center_scale(boxes, self.cfg.input_size)
        center += self._shifts[pick]
        widths = np.array([self.data.images[s.image_id]["width"] for s in samples], np.float32)
        r = self.recipe
        return sample_augmentation(
            rng, center, scale, np.stack([s.keypoints for s in samples]), np.stack([s.visible for s in samples]),
            self.flip_index, image_widths=widths, flip_p=r.flip_p, half_body_p=r.half_body_p,
            half_body_min=r.half_body_min, upper_body=self.upper_body, scale_factor=r.scale_factor,
            rotation_factor=r.rotation_factor, rotation_p=r.rotation_p, input_size=self.cfg.input_size)

    def _reader(self, paths):
        from rapidpose.io import read_ahead

        if self.device.type != "cuda":
            return read_ahead(paths)
        from rapidpose.photos.decode import DecodePool

        if self._pool is None:
            self._pool = DecodePool(workers=_decode_workers(), window=256)
        return self._pool.map(paths)

    def _make(self, pick, images, aug):
        import torch

        from rapidpose.train.augment import training_matrices, transform_keypoints
        from rapidpose.train.targets import udp_heatmaps

        keep = []
        for j, image in enumerate(images):
            if not isinstance(image, RapidPoseError):
                keep.append(j)
                continue
            with self._lock:  # batches are made on two threads
                self.unreadable += 1
                said, _ = str(image) in self._said, self._said.add(str(image))
            if not said:
                log.warning("skipped: %s", image)
        if not keep:
            return None
        samples = [self.data.samples[pick[j]] for j in keep]
        aug = _take(aug, np.array(keep))
        size = self.cfg.input_size
        keypoints = np.stack([s.keypoints for s in samples]).astype(np.float32)
        visible = np.stack([s.visible for s in samples]).astype(np.float32)
        matrices = training_matrices(aug, size)
        crop_keypoints, crop_visible = transform_keypoints(keypoints, visible, matrices, aug, self.flip_index, size)
        with contextlib.nullcontext() if self._stream is None else torch.cuda.stream(self._stream):
            crops = self._crops([images[j] for j in keep], matrices)
            targets, weights = udp_heatmaps(torch.from_numpy(crop_keypoints).to(self.device),
                                            torch.from_numpy(crop_visible).to(self.device), size,
                                            self.cfg.heatmap_size, self.recipe.sigma)
            ready = None
            if self._stream is not None:
                ready = torch.cuda.Event()
                ready.record(self._stream)
        return _Batch(crops, targets, weights, ready)

    def _centre_shifts(self) -> np.ndarray:
        """The official dataset's centre shift of every person (N, 2), drawn once a run (its seed and the
        person's place in the set decide it), as mmpose draws it once when it builds the set."""
        r, out = self.recipe, np.zeros((len(self.data.samples), 2), np.float32)
        for i, sample in enumerate(self.data.samples):
            rng = np.random.default_rng([self.seed, 1, i])
            if rng.random() < r.center_jitter_p:
                out[i] = r.center_jitter * (rng.random(2) - 0.5) * (sample.box[2:] - sample.box[:2])
        return out

    def _crops(self, images, matrices):
        import torch

        size = self.cfg.input_size
        if self.device.type == "cuda":
            from rapidpose.topdown.gpu_ops import warp_crops_batch

            on_device = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device, non_blocking=True) for im in images]
            return warp_crops_batch(on_device, matrices, [1] * len(images), size)
        from rapidpose.topdown.geometry import normalize_crops, warp_crops

        crops = np.concatenate([warp_crops(im, m[None], size) for im, m in zip(images, matrices)])
        return torch.from_numpy(normalize_crops(crops))

    def close(self):
        if self._pool is not None:
            self._pool.close()


def _decode_workers() -> int:
    """Decoding processes for one training process: every person is a decoded photo (about 4 ms of a
    core for a COCO one), so a GPU stepping 2,000+ crops/s needs about 10 cores; the host's cores are
    shared among the processes torchrun starts on it, and one is left to each for its own Python."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(16, cpus // local - 1))


def _ahead(batches, depth: int = 3):
    """The batches made on a thread of their own, `depth` ahead: decoding, augmenting, warping and the
    targets of the next steps overlap the network's step (torch and OpenCV release the GIL). Items may
    be futures of batches, and None (a batch none of whose images could be read), which is skipped."""
    import queue

    done, stop = object(), threading.Event()
    ready: queue.Queue = queue.Queue(depth)

    def make():
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            ready.put(done)
        except BaseException as exc:  # handed to the training loop, which raises it
            ready.put(exc)
        finally:
            batches.close()

    worker = threading.Thread(target=make, name="rapidpose-train-data", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Future):
                item = item.result()
            if item is not None:
                yield item
    finally:
        stop.set()
        while worker.is_alive():  # let it see the stop (and not block on a full queue)
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def _take(aug, rows):
    """The Augmentation of some of its people (same dataclass, each array indexed)."""
    return type(aug)(**{name: getattr(aug, name)[rows] for name in aug.__dataclass_fields__})


# ---------------------------------------------------------------- one step

def _step(net, model, optimizer, batch, recipe, precision, device):
    import torch

    from rapidpose.train.targets import keypoint_mse_loss

    batch.wait(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        heatmaps = net(batch.crops.to(device, non_blocking=True))
    loss = keypoint_mse_loss(heatmaps.float(), batch.targets, batch.weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.clip_grad:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.clip_grad)
    optimizer.step()
    return loss.detach()


def _mean_over_processes(loss, world: int) -> float:
    if world > 1:
        import torch

        loss = loss.clone()
        torch.distributed.all_reduce(loss)
        loss /= world
    return float(loss)


# ---------------------------------------------------------------- validation, checkpoints, logs

def _validate(model, val, device, epoch: int, step: int, writer) -> float | None:
    """COCO keypoint AP on the validation set with its ground-truth boxes (evaluate/coco.py), on a copy
    of the network in eval mode (the backend casts and captures; the training weights stay as they are)."""
    from rapidpose.evaluate.coco import evaluate
    from rapidpose.runtime.torch_runtime import TorchRuntime
    from rapidpose.topdown.estimator import PoseEstimator

    if val.skeleton.sigmas is None:
        log.info("no validation AP: keypoint set '%s' has no OKS sigmas", val.skeleton.name)
        return None
    frozen = copy.deepcopy(model).eval()
    frozen.skeleton = model.skeleton
    est = PoseEstimator(TorchRuntime(frozen, str(device), precision="fp32", cuda_graphs=False))
    result = evaluate(est, val.annotations, val.image_dir)
    ap, ar = result.metrics["AP"], result.metrics["AR"]
    log.info("epoch %d: validation AP %.4f, AR %.4f", epoch, ap, ar)
    if writer is not None:
        writer.add({"epoch": epoch, "step": step, "ap": ap, "ar": ar})
    return ap


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best_ap: float | None = None


def _skeleton_meta(skeleton) -> dict:
    from rapidpose.skeletons import skeleton_to_meta

    return skeleton_to_meta(skeleton)


def _checkpoint(model, skeleton, settings, **extra) -> dict:
    """rapidpose's checkpoint layout: the official weights under "state_dict", the keypoint set and the
    settings under "meta" -> "rapidpose" (what load_model reads back)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": state, "meta": {"rapidpose": {"keypoint_set": _skeleton_meta(skeleton),
                                                        "settings": settings}}, **extra}


def _save_epoch(output: Path, model, optimizer, state: _State, skeleton, settings, ap) -> None:
    better = ap is not None and (state.best_ap is None or ap > state.best_ap)
    if better:
        state.best_ap = ap
    weights = _checkpoint(model, skeleton, settings, epoch=state.epoch, step=state.step, ap=ap)
    _atomic_save(weights, output / f"epoch_{state.epoch:03d}.pth")
    if better:
        _atomic_save(weights, output / "best.pth")
    resume = {**weights, "optimizer": optimizer.state_dict(), "best_ap": state.best_ap}
    _atomic_save(resume, output / "last.pth")


def _atomic_save(obj, path: Path) -> None:
    """Written beside and renamed: an interrupted save leaves the previous file whole."""
    import torch

    part = path.with_suffix(path.suffix + ".part")
    torch.save(obj, part)
    os.replace(part, path)


def _resume(path: Path, model, optimizer, skeleton) -> _State:
    import torch

    from rapidpose.skeletons import skeleton_from_meta

    if not path.is_file():
        raise InputError(f"--resume continues from '{path}', which does not exist: run without --resume first "
                         f"(or give the --output of the interrupted run)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    carried = skeleton_from_meta(saved["meta"]["rapidpose"]["keypoint_set"])
    if list(carried.keypoints) != list(skeleton.keypoints):
        raise InputError(f"'{path}' was trained on keypoint set '{carried.name}' ({carried.num_keypoints} keypoints), "
                         f"these annotations have '{skeleton.name}' ({skeleton.num_keypoints}): resume with the same "
                         f"annotations, or start a new --output")
    model.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    log.info("resuming '%s' after epoch %d (step %d)", path, saved["epoch"], saved["step"])
    return _State(epoch=int(saved["epoch"]), step=int(saved["step"]), best_ap=saved.get("best_ap"))


def _plot(log_path: Path, png: Path) -> None:
    """Loss against step (left) and validation AP against epoch (right), drawn with OpenCV."""
    import cv2

    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    losses = [(e["step"], e["loss"]) for e in entries if "loss" in e and math.isfinite(e["loss"])]
    aps = [(e["epoch"], e["ap"]) for e in entries if "ap" in e]
    image = np.full((360, 960, 3), 255, np.uint8)
    for k, (title, points) in enumerate((("loss", losses), ("validation AP", aps))):
        x0, y0, w, h = 60 + k * 480, 40, 380, 260
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
        cv2.putText(image, title, (x0, y0 - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        if not points:
            continue
        xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        lo, hi = (0.0, 1.0) if k == 1 else (min(ys.min(), 0.0), ys.max() or 1.0)
        span_x = max(xs.max() - xs.min(), 1.0)
        pts = np.stack([x0 + (xs - xs.min()) / span_x * w, y0 + h - (ys - lo) / max(hi - lo, 1e-12) * h], 1)
        cv2.polylines(image, [pts.astype(np.int32)], False, (200, 60, 0), 2, cv2.LINE_AA)
        cv2.putText(image, f"{ys[-1]:.4g}", (x0 + w - 70, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 60, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(image, "step" if k == 0 else "epoch", (x0 + w // 2 - 15, y0 + h + 25), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(png), image)


# ---------------------------------------------------------------- processes and devices

def _distributed() -> tuple[int, int]:
    """(rank, world size): torchrun's environment starts the process group (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _device_for(device: str, rank: int):
    import torch

    if device.startswith("cuda") and os.environ.get("LOCAL_RANK") is not None:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # torchrun: a GPU per process
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _bar(total: int, done: int, shown: bool):
    if not shown:
        return None
    from rapidpose.progress import progress

    bar = progress(total, "train", unit="step")
    bar.update(done)
    return bar


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
