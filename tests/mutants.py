"""Break each promise the README makes, one at a time, and check that the tests notice.

    python tests/mutants.py            # every mutant
    python tests/mutants.py flip dark  # those whose names contain these words

Each mutant is one text replacement in a throwaway copy of src/; the named tests then run against
that copy (PYTHONPATH puts it before the installed package) and must fail. The checkout itself is
never touched. Prints one line per mutant with the first test that caught it; exits 1 if any
mutant survives, 2 if a replacement no longer matches the code (update the mutant with the code).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under src/rapidpose
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root


MUTANTS = (
    Mutant("flip swap off", "topdown/estimator.py",
           "self._flip_index = self.skeleton.flip_index()",
           "self._flip_index = np.arange(self.skeleton.num_keypoints)",
           ("tests/test_pipeline.py",)),
    Mutant("smoothing off", "video/pipeline.py",
           "smoother = KeypointSmoother() if smooth else None",
           "smoother = None",
           ("tests/test_video.py::test_smooth_filters_each_tracks_keypoints_with_one_euro",)),
    Mutant("DARK refinement off (integer peaks)", "topdown/decode.py",
           "refined = (coords - newton_step(log_patch).reshape(n, k, 2)).astype(np.float32)",
           "refined = coords.astype(np.float32)",
           ("tests/test_decode.py", "tests/test_gpu_ops.py")),
    Mutant("UDP inverse replaced by the non-UDP one", "topdown/geometry.py",
           "step = size / (np.asarray(heatmap_size, np.float64) - 1.0)",
           "step = size / np.asarray(heatmap_size, np.float64)",
           ("tests/test_decode.py", "tests/test_geometry.py")),
    Mutant("ImageNet mean and std swapped", "topdown/geometry.py",
           "MEAN = np.array([0.485, 0.456, 0.406], np.float32)\nSTD = np.array([0.229, 0.224, 0.225], np.float32)",
           "MEAN = np.array([0.229, 0.224, 0.225], np.float32)\nSTD = np.array([0.485, 0.456, 0.406], np.float32)",
           ("tests/test_geometry.py", "tests/test_model.py")),
    Mutant("ImageNet mean and std in BGR order", "topdown/geometry.py",
           "MEAN = np.array([0.485, 0.456, 0.406], np.float32)\nSTD = np.array([0.229, 0.224, 0.225], np.float32)",
           "MEAN = np.array([0.406, 0.456, 0.485], np.float32)\nSTD = np.array([0.225, 0.224, 0.229], np.float32)",
           ("tests/test_geometry.py", "tests/test_model.py")),
    Mutant("rescoring threshold 0.3 instead of 0.2", "evaluate/coco.py",
           "KEYPOINT_THRESHOLD = 0.2", "KEYPOINT_THRESHOLD = 0.3",
           ("tests/test_evaluate.py",)),
    Mutant("rescoring threshold 0.1 instead of 0.2", "evaluate/coco.py",
           "KEYPOINT_THRESHOLD = 0.2", "KEYPOINT_THRESHOLD = 0.1",
           ("tests/test_evaluate.py",)),
    Mutant("OKS-NMS off", "evaluate/coco.py",
           "for i in oks_nms(poses.keypoints, scores, areas, sigmas)]",
           "for i in range(len(poses))]",
           ("tests/test_evaluate.py",)),
    Mutant("ByteTrack's second association stage off", "video/tracking.py",
           "pairs += self._associate([t for t in unmatched if not t.lost], low, boxes, _LOW_MATCH_IOU, None)[0]",
           "pass",
           ("tests/test_tracking.py",)),
    Mutant("BGR arrays taken as RGB", "io.py",
           'if color == "bgr" and image.ndim == 3:', 'if False:',
           ("tests/test_interop.py",)),
    Mutant("JSON Lines flush off", "video/records.py",
           "self._jsonl.flush()", "pass",
           ("tests/test_video.py::test_json_lines_can_be_read_while_the_video_runs",)),
    Mutant("fp8's fc2 without the GELU it took over", "runtime/float8.py",
           "Float8Linear(layer, gelu_first, after_norm=name in AFTER_NORM)",
           "Float8Linear(layer, after_norm=name in AFTER_NORM)",
           ("tests/test_float8.py",)),
    Mutant("compiled CPU batches of fixed shapes (a compile a people count)", "runtime/torch_runtime.py",
           "dynamic=False if self.cuda_graphs else None", "dynamic=False",
           ("tests/test_runtime.py::test_a_compiled_cpu_runtime_takes_any_number_of_people_in_two_graphs",)),
    # the GPU kernels, checked in CPU-only runs by Triton's interpreter (tests/test_triton_interpreted.py)
    Mutant("the attention kernel attending to keys past the sequence", "runtime/fused_attention.py",
           'logits = tl.where(key[None, :] < tokens, logits, float("-inf"))', "logits = logits",
           ("tests/test_triton_interpreted.py",)),
    Mutant("the add + norm kernel's variance unbiased (torch's LayerNorm is biased)", "runtime/fused_norm.py",
           "tl.sum(centered * centered, axis=1) / width + EPS",
           "tl.sum(centered * centered, axis=1) / (width - 1) + EPS",
           ("tests/test_triton_interpreted.py",)),
    Mutant("the FP8 row kernel missing a row's last column", "runtime/float8.py",
           "inside = (row[:, None] < rows) & (cols[None, :] < width)",
           "inside = (row[:, None] < rows) & (cols[None, :] < width - 1)",
           ("tests/test_triton_interpreted.py",)),
    Mutant("the crop kernel reading a right neighbour past the region's edge", "topdown/crop_kernel.py",
           "(xi >= -1) & (xi + 1 < width)", "(xi >= -1) & (xi < width)",
           ("tests/test_crop_kernel.py",)),
    Mutant("a Ray actor's calls sharing the estimator at once", "distributed/ray_data.py",
           "with self._device:", "with contextlib.nullcontext():",
           ("tests/test_ray.py::test_calls_at_once_read_together_and_take_the_estimator_in_turn",)),
)


def run(mutant: Mutant, workdir: Path) -> tuple[str, str]:
    """('caught', first failing test) or ('survived', '') or ('stale', why)."""
    src = workdir / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = src / "rapidpose" / mutant.path
    text = target.read_text()
    if text.count(mutant.old) != 1:
        return "stale", f"{mutant.path} has {text.count(mutant.old)} copies of the text to replace"
    target.write_text(text.replace(mutant.old, mutant.new))
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not gpu",
                           *mutant.tests], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return "survived", ""
    failed = re.search(r"^FAILED (\S+)", proc.stdout, re.M)
    if failed is None:  # not a test failure (an import error, a collection error): show it
        return "stale", proc.stdout[-2000:] + proc.stderr[-2000:]
    return "caught", failed.group(1)


def main(words: list[str]) -> int:
    chosen = [m for m in MUTANTS if not words or any(w.lower() in m.name.lower() for w in words)]
    worst = 0
    with tempfile.TemporaryDirectory(prefix="rapidpose-mutants-") as tmp:
        for mutant in chosen:
            outcome, detail = run(mutant, Path(tmp))
            print(f"{outcome:9s} {mutant.name}: {detail}", flush=True)
            worst = max(worst, {"caught": 0, "survived": 1, "stale": 2}[outcome])
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
