"""Ray Data (distributed/ray_data.py and `predict --ray`): on a local Ray instance of this machine's CPUs, the
results of a run without Ray, an unreadable photo reported in its place and the rest kept, the manifest right;
the options a --ray run cannot take refused before anything starts."""
import json
import shutil

import numpy as np
import pytest
from conftest import ASSETS, RTMDET

ray = pytest.importorskip("ray", reason="Ray Data is the extra 'ray': pip install 'rapidpose[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is the extra 'ray': pip install 'rapidpose[ray]'")

import pyarrow as pa  # noqa: E402  (Ray Data's own dependency)

from rapidpose.cli import main  # noqa: E402
from rapidpose.distributed.ray_data import PosePredictor, actor_pool, poses_in, result_schema  # noqa: E402
from rapidpose.errors import InputError  # noqa: E402
from rapidpose.io import read_image  # noqa: E402
from rapidpose.photos.pipeline import predict_photos  # noqa: E402
from rapidpose.topdown.estimator import PoseEstimator  # noqa: E402

# Ray's own: it copies its settings, deprecated ones included, for each dataset
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

BROKEN = "000000000300-broken.jpg"  # sorts among the photos: its entry comes in the middle


def network(checkpoint) -> dict:
    """The tiny model on the CPU in fp32 (the exact reference), RTMDet-nano finding the people."""
    return {"model": str(checkpoint), "detector": str(RTMDET), "backend": "torch", "precision": "fp32",
            "device": "cpu"}


def options(checkpoint) -> list[str]:
    return [f"--{key}={value}" for key, value in network(checkpoint).items()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The four coco-mmpose photos, four of coco-val2017-100 and one file that is not an image."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    folder.mkdir()
    for source in [*sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg")),
                   *sorted((ASSETS / "images" / "coco-val2017-100").glob("*.jpg"))[:4]]:
        shutil.copy(source, folder / source.name)
    (folder / BROKEN).write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def plain(photos, tiny_checkpoint, tmp_path_factory):
    """The JSON Lines of `rapidpose predict` without Ray: what every run here is held to."""
    out = tmp_path_factory.mktemp("plain") / "poses.jsonl"
    assert main(["predict", str(photos), *options(tiny_checkpoint), "--jsonl", str(out)]) == 1  # one unreadable
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(photos, tiny_checkpoint):
    """The photos through the pipeline of `predict` without Ray, in this process: (estimator, results)."""
    est = PoseEstimator(**network(tiny_checkpoint))
    return est, list(predict_photos(est, sorted(photos.iterdir())))


def assert_same_poses(table, reference) -> None:
    """Result columns, one row per photo in input order, hold what the plain pipeline found: the same
    sizes, boxes and box scores, keypoints within 1e-3 px, the unreadable photo's error in its place."""
    est, results = reference
    assert table.num_rows == len(results) and sum(table.column("people").to_pylist()) > 0
    rows = table.select(["path", "width", "height", "people", "error"]).to_pylist()
    for row, want, got in zip(rows, results, poses_in(table, est.skeleton)):
        assert row["path"] == str(want.path)
        if want.error is not None:
            assert got is None and row["error"] == str(want.error) and "could not be decoded" in row["error"]
            assert row["width"] is None and row["height"] is None and row["people"] == 0
            continue
        assert row["error"] is None and (row["width"], row["height"]) == want.size
        assert row["people"] == len(got) == len(want.poses)
        np.testing.assert_array_equal(got.boxes, want.poses.boxes)
        np.testing.assert_array_equal(got.box_scores, want.poses.box_scores)
        np.testing.assert_allclose(got.keypoints, want.poses.keypoints, atol=1e-3, rtol=0)
        np.testing.assert_allclose(got.keypoint_scores, want.poses.keypoint_scores, atol=1e-4, rtol=0)


def assert_same_entries(got: list[dict], want: list[dict]) -> None:
    """JSON entries of the same images, sizes, errors and boxes, keypoints within 1e-3 px (written to
    0.01 px: so one step of that rounding apart at most)."""
    assert [e["image"] for e in got] == [e["image"] for e in want]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "people"} == {k: v for k, v in w.items() if k != "people"}
        assert [p["box"] for p in g["people"]] == [p["box"] for p in w["people"]], g["image"]
        assert [p["box_score"] for p in g["people"]] == [p["box_score"] for p in w["people"]], g["image"]
        for a, b in zip(g["people"], w["people"]):
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.01 + 1e-3, rtol=0)


# ---------------------------------------------------------------- the map_batches class

def test_the_map_batches_class_gives_the_poses_of_a_run_without_ray(local_ray, photos, reference, tiny_checkpoint):
    files = sorted(photos.iterdir())
    ds = ray.data.from_items([{"path": str(f), "id": i} for i, f in enumerate(files)], override_num_blocks=2)
    # two CPUs: the worker's network runs on two threads, as this process's does (the random tiny model's flat
    # heatmaps turn the rounding of other sums, another thread count's, into keypoints 2e-3 px apart)
    poses = ds.map_batches(PosePredictor, fn_constructor_kwargs=network(tiny_checkpoint), batch_size=5, num_gpus=0,
                           num_cpus=2, compute=actor_pool(1))  # two calls at once in the one actor
    table = pa.concat_tables(poses.iter_batches(batch_size=None, batch_format="pyarrow")).sort_by("id")
    assert table.schema.names == ["path", "id", *result_schema(17).names]  # the columns in pass through
    assert table.select(result_schema(17).names).schema == result_schema(17)
    assert_same_poses(table, reference)


def test_calls_at_once_read_together_and_take_the_estimator_in_turn(photos, tiny_checkpoint):
    """Without Ray: what an actor_pool actor does with two calls at once."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    predictor = PosePredictor(**network(tiny_checkpoint))
    inside, most, guard = [0], [0], threading.Lock()
    predict = predictor.estimator.predict

    def counted(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for the other call to reach the estimator if it could
        try:
            return predict(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    files = sorted(photos.iterdir())
    batches = [{"path": np.array([str(f) for f in files[k::3]])} for k in range(3)]
    alone = [predictor(b) for b in batches]
    predictor.estimator.predict = counted
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(predictor, batches))
    assert most[0] == 1  # one batch at a time on the device
    for a, b in zip(alone, together):
        assert a.equals(b)


def test_paths_bytes_and_arrays_in_give_the_same_columns(photos, tiny_checkpoint, tmp_path):
    """Without Ray: the class is a plain callable; relative paths are taken from `root`."""
    files = sorted(photos.iterdir())[1:5]
    broken = files.index(photos / BROKEN)
    predictor = PosePredictor(**network(tiny_checkpoint), root=photos)
    by_path = predictor({"path": np.array([f.name for f in files], object)})
    by_bytes = predictor({"bytes": np.array([f.read_bytes() for f in files], object), "path": [f.name for f in files]})
    by_array = predictor({"image": [read_image(f) if f.name != BROKEN else np.zeros((0, 0, 3), np.uint8)
                                    for f in files]})
    assert by_path.equals(by_bytes)
    assert by_array.column_names == result_schema(17).names  # nothing to pass through
    good = [i for i in range(len(files)) if i != broken]
    assert by_array.take(good).equals(by_path.drop_columns(["path"]).take(good))
    assert by_path.column("people").to_pylist()[broken] == 0 and by_path.column("error")[broken].as_py() == \
        f"'{BROKEN}' could not be decoded as an image (empty, corrupt or not an image file)"
    assert by_array.column("error")[broken].as_py() == \
        f"'row {broken} of the batch' has shape (0, 0, 3): expected (H, W), (H, W, 3) or (H, W, 4)"
    with pytest.raises(InputError, match="none of them images"):
        predictor({"id": [1, 2]})


# ---------------------------------------------------------------- rapidpose predict --ray

def test_predict_on_ray_writes_the_lines_of_a_plain_run_and_a_manifest(local_ray, photos, plain, tiny_checkpoint,
                                                                       tmp_path, capsys):
    out = tmp_path / "poses.jsonl"
    assert main(["predict", str(photos), *options(tiny_checkpoint), "--ray", "local", "--jsonl", str(out)]) == 1
    assert f"ERROR: '{photos / BROKEN}' could not be decoded" in capsys.readouterr().err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert_same_entries(got, plain)
    assert got[2] == {"image": str(photos / BROKEN), "people": [], "error": f"'{photos / BROKEN}' could not be "
                      f"decoded as an image (empty, corrupt or not an image file)"}

    manifest = json.loads((tmp_path / "poses.manifest.json").read_text())
    people = sum(len(e["people"]) for e in plain)
    assert manifest["model"] == str(tiny_checkpoint) and manifest["name"] == "coco"
    assert len(manifest["keypoint_names"]) == 17
    assert manifest["inputs"] == {"paths": [str(photos)], "lists": [], "images": 9}
    assert manifest["format"] == "jsonl" and manifest["shards"] == ["poses.jsonl"]
    assert manifest["counts"] == {"images": 9, "written": 9, "failed": 1, "people": people}
    assert manifest["errors"] == [{"image": str(photos / BROKEN), "error": got[2]["error"]}]
    assert manifest["interrupted"] is False and manifest["error"] is None
    # the cluster's two CPUs: one worker that takes both (a CPU worker's threads are its network's)
    assert manifest["ray"] == {"address": "local", "nodes": 1, "workers": 1, "gpus_per_worker": 0,
                               "cpus_per_worker": 2, "images_per_batch": 16}


def test_predict_on_ray_writes_parquet_shards_and_a_manifest(local_ray, photos, plain, reference, tiny_checkpoint,
                                                             tmp_path):
    import pyarrow.parquet as pq

    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{f}\n" for f in sorted(photos.iterdir())))
    out = tmp_path / "poses"
    # 8 photos a call, then 1: the batches of the run without Ray (its first holds 8), so the network's batches
    # are the same too (the tiny model's flat heatmaps turn the sums of other batch sizes into 2e-3 px)
    assert main(["predict", "--list", str(listing), *options(tiny_checkpoint), "--ray", "local", "--parquet", str(out),
                 "--ray-workers", "1", "--ray-cpus-per-worker", "2", "--images-per-batch", "8"]) == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["shards"] and all((out / shard).is_file() for shard in manifest["shards"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["_manifest.json", *manifest["shards"]])
    assert manifest["counts"] == {"images": 9, "written": 9, "failed": 1,
                                  "people": sum(len(e["people"]) for e in plain)}
    assert manifest["inputs"]["lists"] == [str(listing)] and manifest["format"] == "parquet"
    assert manifest["ray"]["workers"] == 1 and manifest["ray"]["images_per_batch"] == 8

    table = pq.read_table(out).sort_by("index")  # the folder reads back as one table (the manifest: '_', skipped)
    assert table.column("index").to_pylist() == list(range(9))
    assert_same_poses(table, reference)


# ---------------------------------------------------------------- what a --ray run cannot do

@pytest.mark.parametrize("flags, message", [
    (["--ray", "--resume", "--jsonl", "x.jsonl"], "--resume cannot be used with --ray"),
    (["--ray", "--draw", "drawn", "--jsonl", "x.jsonl"], "--draw cannot be used with --ray"),
    (["--ray", "--decoder", "gpu", "--json", "x.json"], "--decoder cannot be used with --ray"),
    (["--parquet", "out"], "--parquet goes with --ray: add --ray"),
    (["--ray-workers", "2", "--ray-gpus-per-worker", "1", "--jsonl", "x.jsonl"],
     "--ray-workers, --ray-gpus-per-worker go with --ray"),
    (["--ray"], "--ray writes its results to files: give --jsonl FILE"),
    (["--ray", "--parquet", "out", "--jsonl", "x.jsonl"], "--parquet is written by the workers, --jsonl by this"),
    (["--ray", "--device", "cuda:1", "--jsonl", "x.jsonl"], "with --ray each worker uses the GPU Ray gives it"),
])
def test_what_a_ray_run_cannot_do_is_refused_before_it_starts(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(ASSETS / "images" / "coco-mmpose"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_parquet_folder_with_files_in_it_is_refused(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "old.parquet").write_bytes(b"")
    assert main(["predict", str(ASSETS / "images" / "coco-mmpose"), *options(tiny_checkpoint), "--ray", "local",
                 "--parquet", str(tmp_path)]) == 2
    assert "is not empty: give a new or empty folder" in capsys.readouterr().err
