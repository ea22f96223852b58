"""`rapidpose predict --ray`: the same photos and results, the work spread over the machines of a Ray cluster.

Ray workers (actors, each with the model loaded once: distributed.ray_data.PosePredictor) read the
photos and find their people, --images-per-batch photos a call. The results go one of two ways:

- --json, --jsonl, --coco: written by this process, in input order, as each batch comes back: the same
  files as without --ray. One JSON Lines file, not a folder of shards: this process turns about 10,000
  photos/s (2 people each) into lines on one core of a 2-core CPU, a dozen H200s' worth at ~850 photos/s
  each; past that, use --parquet.
- --parquet DIR: the workers write Parquet shards straight into DIR (shared storage or an object store
  on a cluster), one row per photo with its input position in `index`, in no particular order.

Beside --jsonl FILE (FILE.manifest.json, FILE's suffix replaced) or in the Parquet folder (_manifest.json:
readers of a Parquet folder skip names starting with '_', so the folder still reads as one table) a
manifest says what the run did: its inputs, model and keypoint set, the shards, the counts, each image
that could not be read, how it ended and how the work was spread.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rapidpose.cli.options import COUNT, number
from rapidpose.errors import InputError, RapidPoseError, require

log = logging.getLogger("rapidpose")

GPU_SHARE = number(float, 0, 1)  # GPUs per worker: a share of one (the estimator runs on one device)
RAY_ONLY = ("parquet", "ray_workers", "ray_gpus_per_worker", "ray_cpus_per_worker")  # options only --ray takes


def add_ray_options(p) -> None:
    ray = p.add_argument_group("many machines (Ray; extra: pip install 'rapidpose[ray]')")
    ray.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                     help="run on a Ray cluster. ADDRESS: 'auto' (what --ray alone means) joins the running one "
                          "(RAY_ADDRESS, or the one `ray start` made on this machine), 'local' starts one on this "
                          "machine for the run, or host:6379 / ray://host:10001. The workers read the photos (on a "
                          "cluster, give paths every node sees alike), --images-per-batch photos a call; the "
                          "results are those of a run without --ray (--json, --jsonl, --coco, in input order) or "
                          "Parquet shards (--parquet). Not with --resume, --draw, --heatmaps, --boxes or "
                          "--decoder (default: off)")
    ray.add_argument("--parquet", metavar="DIR",
                     help="with --ray: the workers write the results as Parquet shards into this folder (new or "
                          "empty; a path or a URI such as s3://bucket/poses), one row per image (index, path, "
                          "width, height, people, boxes, box_scores, keypoints, keypoint_scores, error), and a "
                          "_manifest.json (default: none)")
    ray.add_argument("--ray-workers", type=COUNT, metavar="N",
                     help="with --ray: pose workers, each loading the model once (default: as many as the cluster "
                          "holds at the start, its GPUs / --ray-gpus-per-worker or its CPUs / "
                          "--ray-cpus-per-worker)")
    ray.add_argument("--ray-gpus-per-worker", type=GPU_SHARE, metavar="G",
                     help="with --ray: GPUs each worker takes, 0 to 1; 0.5 puts two workers on each GPU, whose "
                          "reading and detecting then overlap each other's network work (default: 1 where the "
                          "cluster has GPUs, else 0)")
    ray.add_argument("--ray-cpus-per-worker", type=COUNT, metavar="N",
                     help="with --ray: CPU cores each worker reserves; on CPUs also the threads its network uses "
                          "(default: 1 beside a GPU, else all the cores of the cluster's smallest node)")


def asks_for_ray(args) -> bool:
    """--ray, or an option only a --ray run takes (run_on_ray then says that --ray is missing)."""
    return args.ray is not None or any(getattr(args, name) is not None for name in RAY_ONLY)


@dataclass
class _Outcome:
    """What a run did: entries (or rows) written, people found, the images that could not be read
    ({"image", "error"} each), and how it ended."""

    written: int = 0
    people: int = 0
    errors: list = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None


def run_on_ray(args) -> int:
    from rapidpose.distributed.ray_data import path_for_workers, plan_workers, pose_dataset, ray_messages, ray_session
    from rapidpose.photos.sources import gather

    _check_options(args)
    require("ray.data", "ray")  # before the model loads: a missing extra is said at once
    paths = gather(args.paths, args.list or ())  # before connecting: a wrong path fails at once
    if not paths:
        log.error("no images found in %s", " ".join(args.paths))
        return 1
    skeleton = _skeleton(args)  # here, once: a wrong model fails before any worker starts
    parquet = _Folder(args.parquet) if args.parquet else None
    outcome = _Outcome()
    with ray_messages() as level, ray_session(args.ray, logging_level=level) as ray:
        plan = plan_workers(args.ray_workers, args.ray_gpus_per_worker, args.ray_cpus_per_worker)
        if plan.gpus == 0 and args.device == "cuda":
            raise InputError("--device cuda needs a GPU for each worker: give --ray-gpus-per-worker (1, or 0.5 for "
                             "two workers a GPU), or leave --device at auto")
        per_batch = args.images_per_batch or (64 if plan.gpus else 16)
        log.info("Ray: %d worker%s, %g GPU and %g CPU each, %d images a call, %d images", plan.workers,
                 "s" if plan.workers > 1 else "", plan.gpus, plan.cpus, per_batch, len(paths))
        ds = pose_dataset(paths, plan, per_batch, model=path_for_workers(args.model),
                          detector=path_for_workers(args.detector),
                          device=args.device, backend=args.backend, precision=args.precision,
                          batch_size=args.batch_size, flip_test=args.flip, detector_threshold=args.threshold,
                          dataset_index=args.dataset_index, compile=args.compile, keypoint_set=args.keypoint_set,
                          root=os.getcwd())
        ds.context.enable_progress_bars = level <= logging.WARNING  # Ray's: bars on a terminal, else a line a while
        try:
            if parquet is not None:
                _write_parquet(ds, parquet, outcome)
            else:
                _write_here(ds, args, skeleton, outcome)
        finally:
            said = (args, skeleton, paths, plan, per_batch, ray, outcome)
            if parquet is not None:
                parquet.write("_manifest.json", _manifest(*said, "parquet", parquet.shards))
            elif args.jsonl:
                jsonl = Path(args.jsonl)
                jsonl.with_suffix(".manifest.json").write_text(_json(_manifest(*said, "jsonl", [jsonl.name])))
    log.info("%d of %d images processed, %d people%s", outcome.written - len(outcome.errors), len(paths),
             outcome.people, f"; {len(outcome.errors)} failed (see messages above)" if outcome.errors else "")
    if outcome.interrupted:
        return 130
    return 1 if outcome.errors else 0


@contextlib.contextmanager
def _ending(outcome: _Outcome):
    """Ctrl-C ends the run with what is written; any other error is noted and goes on up."""
    try:
        yield
    except KeyboardInterrupt:
        outcome.interrupted = True
        log.warning("interrupted: closing the outputs")
    except BaseException as exc:
        outcome.error = f"{exc}" if isinstance(exc, RapidPoseError) else f"{type(exc).__name__}: {exc}"
        raise


def _check_options(args) -> None:
    """What a --ray run cannot do, said before anything starts."""
    if args.ray is None:
        given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
        raise InputError(f"{', '.join(given)} {'go' if len(given) > 1 else 'goes'} with --ray: add --ray (a running "
                         f"cluster) or --ray local (one on this machine)")
    refused = [option for option, given in (("--resume", args.resume), ("--draw", args.draw),
                                             ("--heatmaps", args.heatmaps), ("--boxes", args.boxes),
                                             ("--decoder", args.decoder != "auto")) if given]
    if refused:
        raise InputError(f"{', '.join(refused)} cannot be used with --ray (the workers read the photos themselves, "
                         f"on threads, and write no images): run without --ray for {refused[0]}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {args.device} names GPUs of this machine; with --ray each worker uses the GPU "
                         f"Ray gives it: give --device auto, cuda or cpu")
    here = [option for option, value in (("--json", args.json), ("--jsonl", args.jsonl), ("--coco", args.coco))
            if value]
    if args.parquet and here:
        raise InputError(f"--parquet is written by the workers, {', '.join(here)} by this process: give either "
                         f"--parquet or {'/'.join(here)}, or run twice")
    if not (args.parquet or here):
        raise InputError("--ray writes its results to files: give --jsonl FILE (or --json, --coco) or --parquet DIR")


def _skeleton(args):
    """The model's keypoint set, read here (the header and manifest name it) on the CPU, without export."""
    from rapidpose.runtime import make_runtime

    exported = Path(str(args.model)).suffix.lower() in (".onnx", ".xml")
    return make_runtime(args.model, backend="auto" if exported else "torch", device="cpu", precision="fp32",
                        dataset_index=args.dataset_index, keypoint_set=args.keypoint_set).skeleton


def _write_here(ds, args, skeleton, outcome: _Outcome) -> None:
    """--json, --jsonl, --coco from the workers' batches, in input order, each batch as it comes back."""
    from rapidpose.distributed.ray_data import poses_in
    from rapidpose.io import coco_image_id
    from rapidpose.photos.records import PhotoRecords, photo_record

    ds.context.execution_options.preserve_order = True
    header = {"model": str(args.model), **skeleton.to_dict()}  # as a run without --ray writes it
    records = PhotoRecords(header, args.json, args.jsonl, args.coco)
    try:
        with _ending(outcome):
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                columns = {name: batch.column(name).to_pylist() for name in ("index", "path", "width", "height",
                                                                              "error")}
                for i, poses in enumerate(poses_in(batch, skeleton)):
                    path, error = columns["path"][i], columns["error"][i]
                    if poses is None:
                        log.error("%s", error)
                        outcome.errors.append({"image": path, "error": error})
                        records.add(photo_record(path, error=error))
                    else:
                        outcome.people += len(poses)
                        records.add(photo_record(path, (columns["width"][i], columns["height"][i]), poses),
                                    poses.to_coco(coco_image_id(path, columns["index"][i])) if args.coco else ())
                    outcome.written += 1
    finally:
        records.close({"images_done": records.images, "interrupted": outcome.interrupted, "error": outcome.error})


def _write_parquet(ds, folder, outcome: _Outcome) -> None:
    """The workers write the shards; then their rows are counted (what a run cut short left, too)."""
    try:
        with _ending(outcome):
            ds.write_parquet(folder.target)
    finally:
        folder.count(outcome)
    for failed in outcome.errors:
        log.error("%s", failed["error"])


class _Folder:
    """The --parquet folder, a path or a URI (s3://, gs://, ...), through pyarrow's file systems."""

    def __init__(self, where: str):
        from pyarrow import fs

        if "://" in where:
            self.fs, self.path = fs.FileSystem.from_uri(where)
            self.target = where
        else:
            self.fs, self.path = fs.LocalFileSystem(), str(Path(where).resolve())
            self.target = self.path  # absolute: the workers do not run in this folder
        self.shards: list[str] = []
        info = self.fs.get_file_info(self.path)
        if info.type == fs.FileType.File:
            raise InputError(f"--parquet '{where}' is a file: give a folder (new or empty) for the shards")
        if info.type == fs.FileType.Directory and self.fs.get_file_info(fs.FileSelector(self.path)):
            raise InputError(f"--parquet folder '{where}' is not empty: give a new or empty folder (the shards of "
                             f"two runs would read as one table)")

    def count(self, outcome: _Outcome) -> None:
        """Find the shards written (`shards`: names within the folder) and count their rows into `outcome`."""
        import pyarrow.dataset as pds
        from pyarrow import fs

        found = self.fs.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        shards = sorted(f.path for f in found if f.type == fs.FileType.File and f.path.endswith(".parquet"))
        if shards:
            table = pds.dataset(shards, filesystem=self.fs, format="parquet").to_table(
                columns=["path", "people", "error"])
            outcome.written, outcome.people = table.num_rows, int(table.column("people").to_numpy().sum())
            failed = table.filter(table.column("error").is_valid())
            outcome.errors = [{"image": p, "error": e} for p, e in
                              zip(failed.column("path").to_pylist(), failed.column("error").to_pylist())]
        self.shards = [shard[len(self.path):].lstrip("/") for shard in shards]

    def write(self, name: str, document: dict) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as out:
            out.write(_json(document).encode())


def _json(document: dict) -> str:
    """One key a line: readable, and short (the keypoint names and skeleton stay on their lines)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in document.items()) + "\n}\n"


def _manifest(args, skeleton, paths, plan, per_batch, ray, outcome: _Outcome, kind: str, shards: list) -> dict:
    """What the run did (see the module): shards are named relative to the manifest's folder."""
    return {"model": str(args.model), **skeleton.to_dict(),
            "inputs": {"paths": list(args.paths), "lists": list(args.list or ()), "images": len(paths)},
            "format": kind, "shards": shards,
            "counts": {"images": len(paths), "written": outcome.written, "failed": len(outcome.errors),
                       "people": outcome.people},
            "errors": outcome.errors, "interrupted": outcome.interrupted, "error": outcome.error,
            "ray": {"address": args.ray, "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                    "workers": plan.workers, "gpus_per_worker": plan.gpus, "cpus_per_worker": plan.cpus,
                    "images_per_batch": per_batch}}
