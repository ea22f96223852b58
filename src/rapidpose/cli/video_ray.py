"""`rapidpose video --ray`: the videos done on the machines of a Ray cluster (distributed.ray_video).

Each worker writes the outputs of the files it does into the folders named here (--out, --json, --jsonl:
always folders with --ray, each file's outputs <folder>/<name>.mp4, .json, .jsonl as in a run of several
files without Ray), so on a cluster the inputs and those folders must be on storage every node sees at the
same path. Beside them, in the --jsonl folder (else --json's, else --out's), a manifest.json says what the
run did: its inputs, settings and workers, and per file its outputs, frames, people, seconds, where it
ran and its error.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

from rapidpose.errors import InputError, require

log = logging.getLogger("rapidpose")


def add_video_ray_options(p) -> None:
    ray = p.add_argument_group("many machines (Ray; extra: pip install 'rapidpose[ray]')")
    ray.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                     help="do the videos on a Ray cluster, a worker per GPU (or per node's CPUs where it has none), "
                          "each loading the model once and taking the next file when it ends one. ADDRESS: 'auto' "
                          "(what --ray alone means) joins the running cluster, 'local' starts one on this machine "
                          "for the run, or host:6379 / ray://host:10001. The workers read the inputs and write the "
                          "outputs themselves: on a cluster both must be on storage every node sees at the same "
                          "path (a shared file system). --out, --json, --jsonl name folders, and a manifest.json "
                          "goes beside the results. Not with --show or a webcam or stream (default: off)")


def run_video_on_ray(args, inputs, settings) -> int:
    """The files of `inputs` (video.files.Inputs) with `settings` (VideoSettings) on the cluster --ray names."""
    from rapidpose.distributed.ray_data import path_for_workers, plan_workers, ray_messages, ray_session
    from rapidpose.distributed.ray_video import RayVideoWorkers
    from rapidpose.video.files import Report, plan_jobs, share_out

    _check_options(args, inputs)
    require("ray", "ray")  # before the folders are made: a missing extra is said at once
    folders = {name: str(Path(getattr(args, name)).resolve()) if getattr(args, name) else None
               for name in ("out", "json", "jsonl")}  # absolute: the workers do not run in this folder
    jobs = plan_jobs([os.path.abspath(p) for p in inputs.paths], many=True, **folders)
    # a model or detector file of this machine by its absolute path; a hub name as it is
    settings = replace(settings, model=path_for_workers(str(settings.model)),
                       detector=path_for_workers(settings.detector) if settings.detector else settings.detector)
    with ray_messages() as level, ray_session(args.ray, logging_level=level) as ray:
        plan = plan_workers(gpus=0.0 if args.device == "cpu" else None)
        if plan.gpus == 0 and args.device == "cuda":
            raise InputError("--device cuda with --ray needs GPUs in the cluster, and it has none: leave --device at "
                             "auto (the CPUs then) or add GPU nodes")
        with RayVideoWorkers(settings, plan, len(jobs)) as workers:
            log.info("Ray: %d videos on %d worker%s (%s), %g GPU and %g CPU each", len(jobs), len(workers.workers),
                     "s" if len(workers.workers) > 1 else "", ", ".join(workers.workers), plan.gpus, plan.cpus)
            report = Report(len(jobs), f"on {len(workers.workers)} Ray workers")
            try:
                share_out(workers, jobs, report)
            finally:
                report.close()
                manifest = Path(folders["jsonl"] or folders["json"] or folders["out"]) / "manifest.json"
                manifest.write_text(json.dumps(_manifest(args, inputs, settings, plan, ray, workers, report),
                                               indent=1) + "\n")
                log.info("wrote %s", manifest)
    return report.exit_code()


def _check_options(args, inputs) -> None:
    """What a --ray run cannot do, said before anything starts."""
    from rapidpose.video.files import is_live

    if args.show:
        raise InputError("--show opens a window on this machine, but with --ray the videos are done by the cluster's "
                         "workers: write --out FOLDER instead, or run without --ray")
    live = [p for p in inputs.paths if is_live(p)]
    if live:
        raise InputError(f"'{live[0]}' is a live source (a webcam or a stream): --ray does files; run "
                         f"`rapidpose video {live[0]}` without --ray")
    if args.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {args.device} names devices of this machine; with --ray each worker uses the GPU "
                         f"Ray gives it: give --device auto, cuda or cpu")
    if not (args.out or args.json or args.jsonl):
        raise InputError("--ray writes its results to files: give --jsonl FOLDER (or --json, --out)")


def _manifest(args, inputs, settings, plan, ray, workers, report) -> dict:
    results = report.results
    return {"inputs": {"given": list(args.input), "files": len(results)},
            "outputs": {name: getattr(args, name) for name in ("out", "json", "jsonl") if getattr(args, name)},
            "settings": asdict(settings),
            "counts": {"files": len(results), "done": sum(r.error is None and not r.interrupted for r in results),
                       "failed": sum(r.error is not None and not r.interrupted for r in results),
                       "frames": sum(r.frames for r in results), "people": sum(r.people for r in results)},
            "interrupted": any(r.interrupted for r in results),
            "ray": {"address": args.ray, "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                    "workers": workers.workers, "gpus_per_worker": plan.gpus, "cpus_per_worker": plan.cpus},
            "files": [r.to_dict() for r in results]}
