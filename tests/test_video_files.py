"""Several videos (video.files): inputs expanded, outputs named, one process or a worker per device writing
the same lines, an unreadable video and a killed worker's video reported while the others are written."""
import json
import os
import shutil
import signal

import pytest
from conftest import ASSETS, RTMDET, read_jsonl as lines, run_cli as run
from test_video import first_frames

from rapidpose.errors import InputError
from rapidpose.video.files import (FileJob, FileWorkers, Inputs, VideoSettings, expand_inputs, plan_jobs,
                                   unique_stems)

BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
TWO_PEOPLE = ASSETS / "video" / "two-people-1080p.mp4"
FRAMES = ASSETS / "images" / "posetrack18" / "videos" / "000001_mpiinew_test"


def network(checkpoint) -> list[str]:
    """The tiny model on the CPU in fp32 (the exact reference), RTMDet-nano finding the people."""
    return ["--model", str(checkpoint), "--detector", str(RTMDET), "--backend", "torch", "--precision", "fp32"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Short clips of both shared videos, both named clip.mp4 (in a/ and b/), and a file that is no video."""
    root = tmp_path_factory.mktemp("videos")
    for folder, video, frames in (("a", BASKETBALL, 8), ("b", TWO_PEOPLE, 4)):
        (root / folder).mkdir()
        first_frames(video, root / folder / "clip.mp4", frames)
    (root / "broken.mp4").write_bytes(b"not a video")
    return [root / "a" / "clip.mp4", root / "broken.mp4", root / "b" / "clip.mp4"]


@pytest.fixture(scope="module")
def one_process(clips, tiny_checkpoint, tmp_path_factory):
    """The three files one after another in this process: (exit code, stderr, output folder)."""
    out = tmp_path_factory.mktemp("one-process")
    code, said = run("video", *clips, *network(tiny_checkpoint), "--device", "cpu", "--jsonl", out, "--json", out)
    return code, said, out


def test_inputs_are_expanded_and_outputs_named_after_them(tmp_path):
    videos = tmp_path / "videos"
    (videos / "day2").mkdir(parents=True)
    for name in ("b.mp4", "a.MOV", "day2/a.mp4"):
        (videos / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("# the two of day 2\nvideos/day2/a.mp4\n\n/elsewhere/c.mkv\n")
    # a folder of videos is many videos (searched below, sorted), whatever their count; a list, its lines
    assert expand_inputs([videos]).paths == [str(videos / n) for n in ("a.MOV", "b.mp4", "day2/a.mp4")]
    assert expand_inputs([videos / "day2"]).many and expand_inputs([listing]).paths == [
        str(videos / "day2/a.mp4"), "/elsewhere/c.mkv"]
    # one video file, a folder or glob of frames, a webcam: one input, outputs as named
    for one in (videos / "b.mp4", FRAMES, f"{FRAMES}/*.jpg", "0"):
        assert expand_inputs([one]) == Inputs([str(one)], many=False)
    (videos / "day2" / "000001.jpg").write_bytes(b"")  # images (beside the video they come from): frames
    assert expand_inputs([videos / "day2"]).paths == [str(videos / "day2")] and not expand_inputs([videos]).many
    assert expand_inputs([f"{videos}/day2/*.mp4"]).paths == [str(videos / "day2/a.mp4")]
    with pytest.raises(InputError, match="'rtsp://cam/1' is a live source .* run `rapidpose video rtsp://cam/1"):
        expand_inputs([videos / "b.mp4", "rtsp://cam/1"])

    # each input's outputs in the folders, by its name; a name met twice gets -2 (one no input has)
    assert unique_stems(["x/clip.mp4", "y/clip.mp4", "clip-2.mp4", "z/CLIP.mkv", FRAMES, f"{FRAMES}/*.jpg"]) == [
        "clip", "clip-3", "clip-2", "CLIP-4", FRAMES.name, f"{FRAMES.name}-2"]
    jobs = plan_jobs(["x/clip.mp4", "y/clip.mp4"], out=tmp_path / "drawn", jsonl=tmp_path / "poses")
    assert jobs == [FileJob(0, "x/clip.mp4", str(tmp_path / "drawn/clip.mp4"), None, str(tmp_path / "poses/clip.jsonl")),
                    FileJob(1, "y/clip.mp4", str(tmp_path / "drawn/clip-2.mp4"), None, str(tmp_path / "poses/clip-2.jsonl"))]
    assert (tmp_path / "drawn").is_dir() and plan_jobs(["a.mp4"], jsonl="a.jsonl", many=False)[0].jsonl == "a.jsonl"
    with pytest.raises(InputError, match="--json 'poses.json' names a file, but with several inputs"):
        plan_jobs(["x/clip.mp4", "y/clip.mp4"], json="poses.json")
    with pytest.raises(InputError, match="would overwrite the input"):
        plan_jobs([videos / "b.mp4", videos / "a.MOV"], out=videos)


def test_an_unreadable_video_is_reported_and_the_others_are_written(one_process, clips, tiny_checkpoint, tmp_path):
    code, said, out = one_process
    assert code == 1
    assert "ERROR: [2/3] " in said and "could not open video" in said and "broken.mp4" in said
    assert "2 of 3 videos processed on cpu" in said and "1 failed: " in said
    assert sorted(p.name for p in out.iterdir()) == ["clip-2.json", "clip-2.jsonl", "clip.json", "clip.jsonl"]
    assert len(lines(out / "clip.jsonl")) == 8 and len(lines(out / "clip-2.jsonl")) == 4
    assert json.loads((out / "clip-2.json").read_text())["frames"] == lines(out / "clip-2.jsonl")
    # one input as before: its outputs as named, and the lines of the run of several
    alone = tmp_path / "alone.jsonl"
    assert run("video", clips[0], *network(tiny_checkpoint), "--device", "cpu", "--jsonl", alone)[0] == 0
    assert lines(alone) == lines(out / "clip.jsonl")
    # several inputs show in no window
    code, said = run("video", clips[0], clips[2], "--show", "--jsonl", tmp_path)
    assert code == 2 and "--show shows one video in a window, and 2 are given" in said


def test_two_cpu_workers_write_what_one_process_writes(one_process, clips, tiny_checkpoint, tmp_path):
    code, said = run("video", *clips, *network(tiny_checkpoint), "--device", "cpu,cpu", "--jsonl", tmp_path)
    assert code == 1 and "3 videos on 2 devices (cpu, cpu): a worker process each" in said
    assert "could not open video" in said and "2 of 3 videos processed on 2 devices" in said
    _, _, one = one_process
    for name in ("clip.jsonl", "clip-2.jsonl"):
        assert lines(tmp_path / name) == lines(one / name)


def test_a_killed_workers_video_is_reported_and_the_others_go_on(clips, tiny_checkpoint, tmp_path):
    good = [clips[0], clips[2]]
    jobs = [FileJob(i, str(good[i % 2]), jsonl=str(tmp_path / f"{i}.jsonl")) for i in range(3)]
    settings = VideoSettings(model=str(tiny_checkpoint), detector=str(RTMDET), backend="torch", precision="fp32")
    killed = []

    def kill_the_first(job, frames):  # the worker of the first video under way dies in the middle of it
        if not killed:
            killed.append(job.index)
            os.kill(workers.pid(job), signal.SIGKILL)

    with FileWorkers(["cpu", "cpu"], settings) as workers:
        results = sorted(workers.run(jobs, on_frames=kill_the_first), key=lambda r: r.index)
    assert [r.index for r in results] == [0, 1, 2]  # every video comes back
    failed = [r for r in results if r.error]
    # the video that worker held when it died: the one under way, or (when the kill came as that one's
    # last frames were written) the next one it had just been given
    assert len(failed) == 1 and failed[0].index >= killed[0] and failed[0].device == "cpu"
    assert "the worker on cpu stopped (exit code -9, SIGKILL) while processing it" in failed[0].error
    assert all(r.ok and r.frames == len(lines(tmp_path / f"{r.index}.jsonl")) for r in results if r not in failed)

    with FileWorkers(["cpu"], settings) as workers:  # the last worker: the videos left are reported, not lost
        killed.clear()
        results = list(workers.run(jobs, on_frames=kill_the_first))
    dead = [r for r in results if r.error and "SIGKILL" in r.error]
    left = [r for r in results if r.error and r.error.startswith("not processed: no worker is left")]
    # as above, the kill may land just after the first video's last frame: that one is then done
    assert len(results) == 3 and len(dead) == 1 and len(left) >= 1 and len(dead) + len(left) + sum(r.ok for r in results) == 3


def test_a_folder_of_one_video_is_a_run_of_several(clips, tiny_checkpoint, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clips[2], folder / "only.mp4")
    code, said = run("video", folder, *network(tiny_checkpoint), "--device", "cpu", "--jsonl", tmp_path / "poses")
    assert code == 0 and "1 of 1 videos processed" in said and len(lines(tmp_path / "poses" / "only.jsonl")) == 4
