"""Ray Data: photos through the pose network on a Ray cluster, one model per actor, results as Arrow columns.

    import ray
    from rapidpose.distributed.ray_data import PosePredictor, actor_pool

    photos = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)  # columns bytes, path
    poses = photos.map_batches(PosePredictor, fn_constructor_kwargs={"model": "vitpose-b"}, batch_size=64,
                               num_gpus=1, compute=actor_pool(8))
    poses.write_parquet("s3://bucket/poses/")

Input columns, the first present naming the images: `image` (RGB uint8 arrays, e.g. from
ray.data.read_images), `bytes` (image files' bytes, e.g. from ray.data.read_binary_files) or `path` (image
files every worker can read; the worker reads them). Every other column (`path` beside `bytes` or `image`,
an id, an input position: one value per row) passes through unchanged; `bytes` and `image` are dropped.

Result columns, one Arrow schema for every batch (`result_schema`), K the model's keypoints:

    width, height     int32, null where the image could not be read
    people            int32: how many people were found (the length of the four lists below)
    boxes             list<fixed_size_list<float32, 4>>: per person x1, y1, x2, y2 in image pixels
    box_scores        list<float32>
    keypoints         list<fixed_size_list<fixed_size_list<float32, 2>, K>>: per person K (x, y) in pixels
    keypoint_scores   list<fixed_size_list<float32, K>>
    error             string: null, or why the image could not be read (the rest of the batch goes on)

`PosePredictor.__call__` returns a pyarrow.Table rather than a dict of numpy arrays: from object arrays of
per-image arrays Ray makes a fixed-shape tensor column for a batch whose images happen to hold the same
number of people and a variable-shaped one otherwise, and Parquet shards of different column types do not
read back as one table. Plain Arrow lists read anywhere (pandas, DuckDB, Spark); `poses_in` turns a batch
of them (`iter_batches(batch_format="pyarrow")`) back into Poses.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError, RapidPoseError, require
from rapidpose.io import as_rgb, decode_image, image_bytes
from rapidpose.results import Poses

log = logging.getLogger("rapidpose")

IMAGE_COLUMNS = ("image", "bytes", "path")  # where a batch's images come from: the first one present
RESULT_COLUMNS = ("width", "height", "people", "boxes", "box_scores", "keypoints", "keypoint_scores", "error")


def result_schema(num_keypoints: int):
    """The Arrow schema of the result columns for a model of `num_keypoints` keypoints."""
    import pyarrow as pa

    f32 = pa.float32()
    return pa.schema([("width", pa.int32()), ("height", pa.int32()), ("people", pa.int32()),
                      ("boxes", pa.list_(pa.list_(f32, 4))), ("box_scores", pa.list_(f32)),
                      ("keypoints", pa.list_(pa.list_(pa.list_(f32, 2), num_keypoints))),
                      ("keypoint_scores", pa.list_(pa.list_(f32, num_keypoints))), ("error", pa.string())])


class PosePredictor:
    """The callable class for `ray.data.Dataset.map_batches`: each actor loads one PoseEstimator; each
    batch is read (on threads), its people found all at once and posed together (the people of all its
    images share network batches). Columns in and out: see the module.

    model, detector, device and **options (backend, precision, batch_size: crops per network batch,
    flip_test, detector_threshold, dataset_index, compile, keypoint_set) are PoseEstimator's; device
    'auto' takes the GPU Ray gives the actor (num_gpus > 0), else the CPU. root: the folder relative
    `path`s are taken from (Ray workers need not run in the driver's folder). read_threads: threads that
    read and decode a batch's images (OpenCV lets go of the GIL while it decodes).

    Thread-safe: in an `actor_pool` two calls run at once in each actor, one reading and decoding its
    photos while the other's are on the device; the estimator takes one batch at a time.
    """

    def __init__(self, model="vitpose-b", detector="rtmdet-nano", device: str = "auto", root=None,
                 read_threads: int = 8, **options):
        from rapidpose.topdown.estimator import PoseEstimator

        self.estimator = PoseEstimator(model, detector=detector, device=device, **options)
        self.root = None if root is None else Path(root)
        self._readers = ThreadPoolExecutor(max(int(read_threads), 1), thread_name_prefix="rapidpose-read")
        self._device = threading.Lock()  # the estimator's runtimes and CUDA graphs serve one batch at a time

    def __call__(self, batch):
        import pyarrow as pa

        source = next((column for column in IMAGE_COLUMNS if column in batch), None)
        if source is None:
            raise InputError(f"the batch has the columns {sorted(batch)}, none of them images: give a column "
                             f"'image' (RGB arrays), 'bytes' (image files' bytes) or 'path' (image files)")
        values = batch[source]
        names = ([str(p) for p in batch["path"]] if "path" in batch
                 else [f"row {i} of the batch" for i in range(len(values))])
        images = list(self._readers.map(self._read, [source] * len(values), values, names))
        good = [i for i, image in enumerate(images) if not isinstance(image, RapidPoseError)]
        found = []
        if good:
            with self._device:
                found = self.estimator.predict([images[i] for i in good], names=[names[i] for i in good])
        poses = dict(zip(good, found))
        empty = Poses.empty(self.estimator.skeleton)
        every = [poses.get(i, empty) for i in range(len(images))]
        sizes = [image.shape[:2] if i in poses else (None, None) for i, image in enumerate(images)]

        kept = {name: pa.array(np.asarray(batch[name])) for name in batch
                if name not in ("bytes", "image") and name not in RESULT_COLUMNS}
        k = self.estimator.skeleton.num_keypoints
        results = [pa.array([w for _, w in sizes], pa.int32()), pa.array([h for h, _ in sizes], pa.int32()),
                   pa.array([len(p) for p in every], pa.int32()), *_people(every, k),
                   pa.array([None if i in poses else str(image) for i, image in enumerate(images)], pa.string())]
        schema = pa.schema([*(pa.field(name, array.type) for name, array in kept.items()), *result_schema(k)])
        return pa.Table.from_arrays([*kept.values(), *results], schema=schema)

    def _read(self, source: str, value, name: str):
        """One image as RGB uint8, or the error that says why it cannot be had."""
        try:
            if source == "image":
                return as_rgb(np.asarray(value), f"'{name}'")
            data = bytes(value) if source == "bytes" else image_bytes(self._file(value))
            return decode_image(data, name)
        except RapidPoseError as exc:
            return exc

    def _file(self, path) -> Path:
        path = Path(str(path))
        return self.root / path if self.root is not None and not path.is_absolute() else path


def _people(every: list[Poses], k: int) -> list:
    """The boxes, box_scores, keypoints and keypoint_scores columns: per image a list of its people."""
    import pyarrow as pa

    offsets = pa.array(np.concatenate([[0], np.cumsum([len(p) for p in every])]).astype(np.int32))

    def listed(field: str, *shape: int):
        values = np.concatenate([np.zeros((0, *shape), np.float32), *(getattr(p, field) for p in every)])
        array = pa.array(values.reshape(-1))
        for size in reversed(shape):  # (x, y) pairs, then K of them
            array = pa.FixedSizeListArray.from_arrays(array, size)
        return pa.ListArray.from_arrays(offsets, array)

    return [listed("boxes", 4), listed("box_scores"), listed("keypoints", k, 2), listed("keypoint_scores", k)]


def poses_in(batch, skeleton) -> list[Poses | None]:
    """The Poses of each row of a batch of result columns (a pyarrow Table or RecordBatch), None where
    the row has an error. skeleton: the model's keypoint set (PoseEstimator.skeleton)."""
    if batch.num_rows == 0:
        return []
    k = skeleton.num_keypoints

    def unlisted(name: str, *shape: int) -> list[np.ndarray]:
        column = batch.column(name)
        column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        offsets = column.offsets.to_numpy()
        values = column.flatten()
        for _ in shape:
            values = values.flatten()
        values = values.to_numpy(zero_copy_only=False).reshape(-1, *shape)
        return np.split(values, offsets[1:-1] - offsets[0])

    boxes, box_scores = unlisted("boxes", 4), unlisted("box_scores")
    keypoints, keypoint_scores = unlisted("keypoints", k, 2), unlisted("keypoint_scores", k)
    errors = batch.column("error").to_pylist()
    return [None if errors[i] is not None else
            Poses(boxes[i], box_scores[i], keypoints[i], keypoint_scores[i], skeleton) for i in range(batch.num_rows)]


def import_ray():
    """The ray package, its Data library imported (or the message saying how to install them)."""
    require("ray.data", "ray")
    import ray

    return ray


@contextlib.contextmanager
def ray_session(address: str = "auto", **options):
    """Ray, connected for the length of the block, then let go. address: 'auto' (a running cluster:
    RAY_ADDRESS, or the one `ray start` made on this machine), 'local' (a new instance on this machine, for
    this block only), or a cluster's address (host:6379, ray://host:10001); options: ray.init's
    (logging_level, runtime_env, ...). A process that is connected already (a notebook, a test) keeps that
    connection, whatever `address` says, and stays connected."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, **options)
    except ConnectionError as exc:
        raise InputError(f"no Ray cluster could be reached at '{address}' ({exc}): start one (`ray start --head`, "
                         f"`ray up cluster.yaml`), give its address, or use address 'local' to start one "
                         f"on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_pool(workers: int):
    """The compute strategy for PosePredictor: `workers` actors, two calls at once in each (one reading
    its photos while the other's are on the GPU; one at a time, an actor reads, detects and poses in turn)."""
    ray = import_ray()
    return ray.data.ActorPoolStrategy(size=workers, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)


@dataclass(frozen=True)
class WorkerPlan:
    """How many PosePredictor actors run, and the GPUs and CPUs each one reserves."""

    workers: int
    gpus: float
    cpus: float


def plan_workers(workers: int | None = None, gpus: float | None = None, cpus: float | None = None) -> WorkerPlan:
    """A WorkerPlan for the connected cluster, what is not given taken from it as it is now: a GPU per
    worker where it has GPUs; 1 CPU beside a GPU (the GPU does the work), else all the CPUs of its
    smallest node (the network's threads do the work, and Ray holds a worker to the CPUs it reserves);
    then as many workers as the cluster holds."""
    import ray

    total = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        cpus = 1.0 if gpus else min((c for c in nodes if c > 0), default=1.0)
    if workers is None:
        workers = max(1, int(total.get("GPU", 0) // gpus if gpus else total.get("CPU", 0) // cpus))
    return WorkerPlan(int(workers), float(gpus), float(cpus))


def pose_dataset(paths, plan: WorkerPlan, images_per_batch: int, **predictor):
    """The photos at `paths` as a Dataset of result columns after `index` (the position among `paths`)
    and `path` (as given): one block of `images_per_batch` photos per PosePredictor call, `plan.workers`
    actors. predictor: PosePredictor's arguments. Nothing runs until the dataset is read or written."""
    ray = import_ray()
    rows = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
    blocks = max(1, math.ceil(len(rows) / images_per_batch))
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        PosePredictor, fn_constructor_kwargs=predictor, batch_size=images_per_batch, num_gpus=plan.gpus,
        num_cpus=plan.cpus, compute=actor_pool(plan.workers))


@contextlib.contextmanager
def ray_messages():
    """Ray's own messages as rapidpose's go: its notes only with -v, its warnings unless -q (and with -q
    no progress bars). Yields that level, for ray.init (which sets the 'ray' logger's level again).
    Ray sets its loggers up when it is imported: this comes after."""
    mine = logging.getLogger("rapidpose").level
    level = logging.INFO if mine <= logging.DEBUG else logging.ERROR if mine > logging.INFO else logging.WARNING
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield level
    finally:
        for logger, was in zip(loggers, saved):
            logger.setLevel(was)


def path_for_workers(name: str) -> str:
    """A file of this machine as an absolute path (the workers run elsewhere); a name as it is."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name
