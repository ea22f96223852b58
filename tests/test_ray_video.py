"""`rapidpose video --ray` (distributed.ray_video): on a local Ray instance of this machine's CPUs, the lines of a
run without Ray and a manifest; what a --ray run cannot do refused before anything starts."""
import json

import pytest
from conftest import ASSETS, RTMDET, read_jsonl as lines, run_cli as run
from test_video import first_frames

ray = pytest.importorskip("ray", reason="Ray is the extra 'ray': pip install 'rapidpose[ray]'")


BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
TWO_PEOPLE = ASSETS / "video" / "two-people-1080p.mp4"


def test_videos_on_a_local_ray_instance_give_the_lines_of_a_run_without_ray(local_ray, tiny_checkpoint, tmp_path):
    clips = [tmp_path / "basketball.mp4", tmp_path / "two-people.mp4"]
    first_frames(BASKETBALL, clips[0], 8)
    first_frames(TWO_PEOPLE, clips[1], 4)
    network = ["--model", tiny_checkpoint, "--detector", RTMDET, "--backend", "torch", "--precision", "fp32",
               "--device", "cpu"]
    assert run("video", *clips, *network, "--jsonl", tmp_path / "plain")[0] == 0
    code, said = run("video", *clips, *network, "--ray", "local", "--jsonl", tmp_path / "ray")
    assert code == 0 and "2 of 2 videos processed on 1 Ray workers" in said
    for clip in clips:
        assert lines(tmp_path / "ray" / f"{clip.stem}.jsonl") == lines(tmp_path / "plain" / f"{clip.stem}.jsonl")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["counts"] == {"files": 2, "done": 2, "failed": 0, "frames": 12, "people": manifest["counts"]["people"]}
    assert [f["input"] for f in manifest["files"]] == [str(c) for c in clips]
    assert [(f["frames"], f["error"]) for f in manifest["files"]] == [(8, None), (4, None)]
    assert manifest["files"][1]["outputs"] == {"jsonl": str(tmp_path / "ray" / "two-people.jsonl")}
    assert manifest["settings"]["model"] == str(tiny_checkpoint) and manifest["ray"]["workers"]
    assert manifest["counts"]["people"] == sum(len(f["people"]) for c in clips
                                               for f in lines(tmp_path / "ray" / f"{c.stem}.jsonl"))


@pytest.mark.parametrize("flags, message", [
    (["--show", "--out", "o"], "--show opens a window on this machine, but with --ray"),
    (["--device", "cuda:1", "--jsonl", "o"], "--device cuda:1 names devices of this machine"),
    ([], "--ray writes its results to files: give --jsonl FOLDER"),
])
def test_what_a_ray_run_cannot_do_is_refused_before_it_starts(flags, message, tmp_path):
    code, said = run("video", BASKETBALL, "--ray", "local", *flags)
    assert code == 2 and message in said
    code, said = run("video", "rtsp://127.0.0.1:9/x", "--ray", "--jsonl", tmp_path)
    assert code == 2 and "'rtsp://127.0.0.1:9/x' is a live source (a webcam or a stream): --ray does files" in said
