"""`rapidpose video` and `PoseEstimator.track` on the shared videos and PoseTrack18 frames."""
import argparse
import ast
import collections
import itertools
import json
import shutil

import av
import cv2
import numpy as np
import pytest
from conftest import ASSETS, RTMDET

from rapidpose import PoseEstimator
from rapidpose.cli import main
from rapidpose.errors import InputError
from rapidpose.video.sources import Frame, open_source
from rapidpose.video.tracking import box_iou, count_identity_switches

BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
TWO_PEOPLE = ASSETS / "video" / "two-people-1080p.mp4"
POSETRACK = ASSETS / "images" / "posetrack18"
CLIP = POSETRACK / "videos" / "000001_mpiinew_test"


def video_info(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, frames, float(stream.average_rate), stream.width, stream.height


def faststart_copy(src, dst):
    """The same video with its index first, as streaming-friendly recordings have it."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        out = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(i.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                o.mux(packet)


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")


def test_video_gives_one_record_per_frame_and_an_h264_of_the_same_rate_and_size(tiny_checkpoint, tmp_path):
    out, js, jl = tmp_path / "out.mp4", tmp_path / "out.json", tmp_path / "out.jsonl"
    code = main(["video", str(BASKETBALL), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--out", str(out), "--json", str(js), "--jsonl", str(jl), "--smooth", "--device", "cpu"])
    assert code == 0
    codec, frames, rate, w, h = video_info(BASKETBALL)
    assert video_info(out) == ("h264", frames, pytest.approx(rate, rel=1e-3), w, h) and frames == 300
    doc = json.loads(js.read_text())
    assert [f["frame"] for f in doc["frames"]] == list(range(300)) and doc["frames_done"] == 300
    assert doc["width"] == 426 and doc["fps"] == pytest.approx(29.97, abs=0.01) and len(doc["keypoint_names"]) == 17
    assert doc["frames"][30]["time"] == pytest.approx(30 / rate, abs=1e-3)
    lines = [json.loads(line) for line in jl.read_text().splitlines()]
    assert lines == doc["frames"]  # the streamed lines are the same records
    people = [p for f in doc["frames"] for p in f["people"]]
    assert len(people) > 300 and all(len(p["keypoints"]) == 17 and "track_id" in p for p in people)
    # two players through 300 frames, crossing, with the detector's second (partial) boxes on them now and
    # then: a few long tracks, not a new id every few frames (measured: 7 ids, 255 to 4 people long, 98.9%
    # of the tracked people in tracks of 20 or more); and nearly everyone has an id (measured 9.8% -1;
    # 36% with ByteTrack's own thresholds)
    lengths = collections.Counter(p["track_id"] for p in people)
    longest = sorted((n for i, n in lengths.items() if i > 0), reverse=True)
    assert longest[0] >= 250 and len(longest) <= 8, lengths
    assert sum(n for n in longest if n >= 20) >= 0.95 * sum(longest), lengths
    assert lengths[-1] <= 0.15 * len(people), lengths


def first_frames(src, dst, n, start=0):
    """The first n frames of a video (from frame `start`), re-encoded (a short clip for quick runs)."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        stream = i.streams.video[0]
        out = o.add_stream("libx264", rate=stream.average_rate)
        out.width, out.height, out.pix_fmt = stream.width, stream.height, "yuv420p"
        for frame in itertools.islice(i.decode(stream), start, start + n):
            o.mux(out.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        o.mux(out.encode())


def test_smooth_filters_each_tracks_keypoints_with_one_euro(estimator, tiny_checkpoint, tmp_path):
    """--smooth gives the raw keypoints of the same run passed through a One-Euro filter per track id,
    at the frames' times; people without a track (-1) pass unchanged."""
    from rapidpose.video.pipeline import track_frames
    from rapidpose.video.smoothing import KeypointSmoother

    clip = tmp_path / "clip.mp4"
    first_frames(BASKETBALL, clip, 40)
    raw = [(f.time, p) for f, p in track_frames(estimator, clip)]
    smoothed = [p for _, p in track_frames(estimator, clip, smooth=True)]
    smoother, moved, tracked = KeypointSmoother(), 0.0, 0
    for (time, a), b in zip(raw, smoothed, strict=True):
        np.testing.assert_array_equal(a.track_ids, b.track_ids)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        if not len(a):
            continue
        np.testing.assert_allclose(b.keypoints, smoother(a.track_ids, a.keypoints, time), atol=1e-4)
        np.testing.assert_array_equal(b.keypoints[a.track_ids < 0], a.keypoints[a.track_ids < 0])
        moved += np.abs(b.keypoints - a.keypoints).sum()
        tracked += (a.track_ids >= 0).sum()
    assert tracked > 40 and moved > 100  # tracks were there, and smoothing moved their keypoints
    # the command line's --smooth is this smoothing
    js = tmp_path / "smooth.json"
    assert main(["video", str(clip), "--model", str(tiny_checkpoint), "--detector", str(RTMDET), "--json", str(js),
                 "--smooth", "--device", "cpu", "--backend", "torch", "--precision", "fp32"]) == 0
    for record, poses in zip(json.loads(js.read_text())["frames"], smoothed, strict=True):
        got = np.array([p["keypoints"] for p in record["people"]]).reshape(-1, 17, 3)
        np.testing.assert_allclose(got[..., :2], poses.keypoints, atol=0.006)  # the JSON rounds to 0.01 px


def test_a_truncated_video_is_read_up_to_the_cut_and_the_outputs_are_valid(tiny_checkpoint, tmp_path, caplog):
    whole = tmp_path / "whole.mp4"
    faststart_copy(BASKETBALL, whole)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    out, js = tmp_path / "out.mp4", tmp_path / "out.json"
    code = main(["video", str(cut), "--model", str(tiny_checkpoint), "--detector", str(RTMDET), "--out", str(out),
                 "--json", str(js), "--device", "cpu"])
    assert code == 1 and "truncated or corrupt" in caplog.text
    doc = json.loads(js.read_text())
    read = len(doc["frames"])
    assert 100 < read < 300 and "truncated" in doc["error"]
    assert video_info(out)[:2] == ("h264", read)
    # an mp4 cut before its index (written last) cannot be decoded at all: say so, and why
    plain = tmp_path / "plain_cut.mp4"
    plain.write_bytes(BASKETBALL.read_bytes()[:300_000])
    with pytest.raises(InputError, match="moov"):
        open_source(plain)


def test_json_lines_can_be_read_while_the_video_runs(tmp_path):
    """Each frame's line is on disk once the frame is added, before the file is closed (a live stream's
    reader, or a run that dies, sees every finished frame)."""
    from rapidpose.video.records import FrameRecords, frame_record

    path = tmp_path / "live.jsonl"
    with FrameRecords({"source": "camera"}, jsonl_path=path) as records:
        for index in range(3):
            records.add(frame_record(index, index / 30, None))
            with open(path, encoding="utf-8") as reader:  # another reader, as `tail -f` would be
                lines = reader.read().splitlines()
            assert [json.loads(line)["frame"] for line in lines] == list(range(index + 1))


def test_interrupting_closes_the_files_cleanly(tiny_checkpoint, tmp_path, monkeypatch):
    import rapidpose.video.pipeline as video

    original = video.track_frames

    def stop_after_ten(*args, **kwargs):
        for n, item in enumerate(original(*args, **kwargs)):
            if n == 10:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(video, "track_frames", stop_after_ten)
    out, js, jl = tmp_path / "out.mp4", tmp_path / "out.json", tmp_path / "out.jsonl"
    code = main(["video", str(BASKETBALL), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--out", str(out), "--json", str(js), "--jsonl", str(jl), "--device", "cpu"])
    assert code == 130
    doc = json.loads(js.read_text())
    assert doc["interrupted"] is True and len(doc["frames"]) == 10
    assert len(jl.read_text().splitlines()) == 10 and video_info(out)[1] == 10


def test_track_api_over_a_folder_of_frames(estimator):
    results = list(estimator.track(CLIP))
    assert [i for i, _ in results] == list(range(5))
    assert all(p.track_ids is not None and len(p.track_ids) == len(p) for _, p in results)
    ids = [set(p.track_ids.tolist()) - {-1} for _, p in results]
    # the two people of this clip keep their ids; none gets a new one (in frame 4 one of them is
    # detected only as low-score fragments that overlap its track too little: unassigned, -1)
    assert ids[0] == {1, 2} and set().union(*ids) == {1, 2}
    assert sum(ids[0] <= later for later in ids) >= 4


def test_detect_every_n_runs_the_detector_on_every_nth_frame_and_tracks_between(estimator):
    calls = []
    detector = estimator.detector

    def counting(image):
        calls.append(1)
        return detector(image)

    est = PoseEstimator.__new__(PoseEstimator)
    est.__dict__.update(estimator.__dict__)
    est.detector = counting
    results = list(est.track(CLIP, detect_every=2, frames_per_batch=2))
    assert len(calls) == 3  # frames 0, 2, 4
    assert all(len(p) > 0 for _, p in results)  # frames 1 and 3 get the tracker's boxes
    ids_detected = set(results[0][1].track_ids.tolist())
    assert set(results[1][1].track_ids.tolist()) <= ids_detected


def panned_clip(tmp_path, frames=12, step=(6, 3)):
    """A 12-frame mp4 panning across PoseTrack18's 012834 frame (11 annotated people with track ids),
    and the ground-truth boxes (xyxy) and ids of each frame."""
    doc = json.loads((POSETRACK / "annotations" / "val" / "012834_mpii_test.json").read_text())
    image = cv2.imread(str(POSETRACK / doc["images"][0]["file_name"]))
    gt = np.array([ast.literal_eval(a["bbox"]) if isinstance(a["bbox"], str) else a["bbox"]
                   for a in doc["annotations"]], np.float32)
    gt[:, 2:] += gt[:, :2]
    ids = np.array([a["track_id"] for a in doc["annotations"]])
    w, h = 1280, 720
    path = tmp_path / "pan.mp4"
    boxes = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            x0, y0 = 200 + step[0] * t, 200 + step[1] * t
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w]), format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
            boxes.append(gt - np.array([x0, y0, x0, y0], np.float32))
        for packet in stream.encode():
            out.mux(packet)
    return path, boxes, ids


def test_identities_on_posetrack18_people_match_the_annotations(estimator, tmp_path):
    path, gt_boxes, gt_ids = panned_clip(tmp_path)
    gt_per_frame, predicted_per_frame, matched = [], [], 0
    for index, poses in estimator.track(path):
        iou = box_iou(gt_boxes[index], poses.boxes) if len(poses) else np.zeros((len(gt_ids), 0))
        best = iou.argmax(axis=1) if iou.shape[1] else np.zeros(len(gt_ids), int)
        hit = iou.max(axis=1, initial=0) > 0.5
        gt_per_frame.append(gt_ids[hit].tolist())
        predicted_per_frame.append(poses.track_ids[best[hit]].tolist())
        matched += hit.sum()
    visible = [((b[:, 2] > 0) & (b[:, 0] < 1280) & (b[:, 3] > 0) & (b[:, 1] < 720)).sum() for b in gt_boxes]
    assert matched >= 0.6 * sum(visible)  # the real detector finds most annotated people
    # ... and they have ids (RTMDet-nano scores them 0.3-0.6 here: measured 69 of 78 with ids, none with
    # ByteTrack's own 0.5 / 0.6), which stay with the same people
    with_id = sum(p >= 0 for ids in predicted_per_frame for p in ids)
    assert with_id >= 0.8 * matched
    assert count_identity_switches(gt_per_frame, predicted_per_frame) == 0


@pytest.fixture(scope="module")
def basketball_cut(tmp_path_factory):
    """Frames 100-139 of the basketball clip as PNGs, exactly as the pipeline reads them (x264 would not
    re-encode them the same twice): two players the detector scores mostly 0.3-0.6, crossing."""
    folder = tmp_path_factory.mktemp("basketball-100-140")
    for frame in itertools.islice(open_source(BASKETBALL), 100, 140):
        cv2.imwrite(str(folder / f"{frame.index:03d}.png"), frame.image[:, :, ::-1])
    return folder


def _untracked_share(results, skip=5):
    """The share of the people after the first `skip` frames that have no track id (-1)."""
    ids = np.concatenate([poses.track_ids for _, poses in results[skip:]])
    assert len(ids) > 60  # two players in 35 frames, and the detector's second boxes
    return float(np.mean(ids < 0))


def test_people_get_track_ids_within_a_few_frames_and_the_tracker_options_apply(estimator, basketball_cut,
                                                                                tiny_checkpoint, tmp_path):
    """RTMDet-nano scores these players 0.3-0.6: with ByteTrack's own thresholds (0.5 high, 0.6 to start a
    track) nearly half of them have no id; the defaults give nearly all an id. The ids depend on the boxes
    only, so the tiny random pose network does as well as any."""
    default = list(estimator.track(basketball_cut))
    assert _untracked_share(default) <= 0.1  # measured 0.047
    bytetrack_own = {"high_threshold": 0.5, "new_track_threshold": 0.6}
    strict = list(estimator.track(basketball_cut, tracker_options=bytetrack_own))
    assert _untracked_share(strict) >= 0.3  # measured 0.448
    slow = list(estimator.track(basketball_cut, tracker_options={"min_hits": 30}))  # no new id in this cut
    assert _untracked_share(slow) >= _untracked_share(default) + 0.08  # measured 0.176
    # the command line's options are these
    js = tmp_path / "strict.json"
    assert main(["video", str(basketball_cut), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--json", str(js), "--device", "cpu", "--backend", "torch", "--precision", "fp32",
                 "--track-high", "0.5", "--new-track", "0.6"]) == 0
    frames = json.loads(js.read_text())["frames"]
    assert [[p["track_id"] for p in f["people"]] for f in frames] == [p.track_ids.tolist() for _, p in strict]
    # ByteTrack's second stage takes boxes down to the low threshold: the detector is asked for them
    lowest = [min(p.box_scores.min() for _, p in run if len(p))
              for run in (default, estimator.track(basketball_cut, tracker_options={"low_threshold": 0.02}))]
    assert lowest[1] < 0.1 <= lowest[0]  # measured 0.062 and 0.104


def test_tracker_options_are_checked():
    from rapidpose.video.pipeline import track_frames

    with pytest.raises(InputError, match="unknown tracker option 'track_thresh': use high_threshold"):
        next(track_frames(None, CLIP, tracker_options={"track_thresh": 0.5}))
    with pytest.raises(InputError, match="need a tracker"):
        next(track_frames(None, CLIP, tracker="none", tracker_options={"min_hits": 3}))
    with pytest.raises(InputError, match="low_threshold"):
        next(track_frames(None, CLIP, tracker_options={"low_threshold": 0.6}))


def video_parser() -> argparse.ArgumentParser:
    from rapidpose.cli.video import add_video_parser

    sub = argparse.ArgumentParser(prog="rapidpose").add_subparsers()
    add_video_parser(sub)
    return sub.choices["video"]


def test_the_tracker_options_on_the_command_line(tiny_checkpoint, caplog):
    from rapidpose.cli.video import _tracker_options
    from rapidpose.video.tracking import tracker_defaults

    parser = video_parser()
    args = parser.parse_args(["in.mp4", "--track-high", "0.5", "--track-low", "0.2", "--new-track", "0.6",
                              "--min-hits", "3", "--track-buffer", "12"])
    assert _tracker_options(args) == {"high_threshold": 0.5, "low_threshold": 0.2, "new_track_threshold": 0.6,
                                      "min_hits": 3, "max_age": 12}
    defaults = _tracker_options(parser.parse_args(["in.mp4"]))
    assert defaults == {k: v for k, v in tracker_defaults().items() if k != "match_iou"}
    assert _tracker_options(parser.parse_args(["in.mp4", "--track", "none"])) is None
    # a tracker setting with --track none would be dropped: refused before anything is loaded
    assert main(["video", str(CLIP), "--model", str(tiny_checkpoint), "--track", "none", "--min-hits", "3"]) == 2
    assert "--min-hits set the tracker, but --track none" in caplog.text


def test_every_video_option_says_what_it_does_and_its_default():
    parser = video_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} has no help"
        text = action.help % {**vars(action), "prog": parser.prog}  # as argparse expands it
        if action.default not in (None, False):
            shown = {str(action.default)} | ({f"{action.default:g}"} if isinstance(action.default, float) else set())
            assert any(f"(default {v}" in text or f"(default: {v}" in text for v in shown), f"{name}: {text!r}"


def test_predict_and_video_json_name_the_same_things_alike(tiny_checkpoint, tmp_path):
    """One schema: the header keys (model, name, keypoint_names, skeleton) and each person's keys (box,
    box_score, keypoints as [x, y, score] per keypoint name) are the same; video adds track_id."""
    common = ["--model", str(tiny_checkpoint), "--detector", str(RTMDET), "--device", "cpu"]
    image_json, video_json, untracked_json = tmp_path / "predict.json", tmp_path / "video.json", tmp_path / "none.json"
    assert main(["predict", str(CLIP), *common, "--json", str(image_json)]) == 0
    assert main(["video", str(CLIP), *common, "--json", str(video_json)]) == 0
    assert main(["video", str(CLIP), *common, "--json", str(untracked_json), "--track", "none"]) == 0
    image, video, untracked = (json.loads(p.read_text()) for p in (image_json, video_json, untracked_json))
    header = {"model", "name", "keypoint_names", "skeleton"}
    assert header <= image.keys() and header <= video.keys() and "keypoints" not in image.keys() | video.keys()
    assert {k: image[k] for k in header} == {k: video[k] for k in header}
    assert len(video["keypoint_names"]) == 17 and video["keypoint_names"][0] == "nose"
    image_people = [p for entry in image["images"] for p in entry["people"]]
    video_people = [p for frame in video["frames"] for p in frame["people"]]
    untracked_people = [p for frame in untracked["frames"] for p in frame["people"]]
    assert image_people and video_people and untracked_people
    assert {tuple(p) for p in image_people} == {("box", "box_score", "keypoints")}
    assert {tuple(p) for p in video_people + untracked_people} == {("box", "box_score", "keypoints", "track_id")}
    assert all(p["track_id"] == -1 for p in untracked_people)  # no tracker: nobody has a track
    for person in image_people + video_people:
        assert len(person["box"]) == 4 and isinstance(person["box_score"], float)
        assert len(person["keypoints"]) == 17 and all(len(k) == 3 for k in person["keypoints"])


def test_without_an_output_the_video_command_warns(tiny_checkpoint, caplog):
    assert main(["video", str(CLIP), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--device", "cpu"]) == 0
    assert "no output asked for (--out, --json, --jsonl or --show)" in caplog.text


def test_a_video_with_a_display_rotation_is_read_as_players_show_it(tmp_path):
    path = tmp_path / "portrait.mp4"
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = 255  # left half white
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(-90)  # a phone held upright: shown turned 90 degrees clockwise
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    source = open_source(path)
    assert source.size == (32, 64) and source.frame_count == 3
    frames = list(source)
    assert len(frames) == 3 and all(f.image.shape == (64, 32, 3) and f.yuv is None for f in frames)
    assert frames[0].image[:24].mean() > 240 and frames[0].image[40:].mean() < 15  # the left half is now on top
    assert open_source(path, rotate=90).size == (64, 32)  # --rotate turns it further


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="unreachable"):
        open_source("rtsp://127.0.0.1:9/nothing")  # a closed port: refused at once
    with pytest.raises(InputError, match="camera 57"):
        open_source(57)
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(InputError, match="could not open video"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="rotate"):
        open_source(BASKETBALL, rotate=45)


def test_a_bad_frame_in_a_folder_is_reported_and_kept_in_the_json(tiny_checkpoint, tmp_path, caplog):
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted(CLIP.glob("*.jpg")):
        shutil.copy(f, frames / f.name)
    (frames / "000002.jpg").write_bytes(b"\xff\xd8\xff broken")
    js, out = tmp_path / "out.json", tmp_path / "out.mp4"
    code = main(["video", str(frames), "--model", str(tiny_checkpoint), "--detector", str(RTMDET), "--json", str(js),
                 "--out", str(out), "--rotate", "90", "--device", "cpu"])
    assert code == 1 and "frame 2 skipped" in caplog.text
    doc = json.loads(js.read_text())
    assert [f["frame"] for f in doc["frames"]] == [0, 1, 2, 3, 4] and "error" in doc["frames"][2]
    assert doc["frames"][2]["people"] == [] and (doc["width"], doc["height"]) == (720, 1280)  # rotated
    assert video_info(out)[1:] == (4, 30.0, 720, 1280)


@pytest.mark.parametrize("encoders, size", [(3, (130, 72)), (1, (65, 33))])
def test_segments_encoded_side_by_side_come_out_in_order(tmp_path, encoders, size):
    from rapidpose.video.writer import VideoWriter

    w, h = size
    path = tmp_path / "segments.mp4"
    with VideoWriter(path, 29.97, size, encoders=encoders, segment_frames=7) as writer:
        for i in range(50):
            writer.write(np.full((h, w, 3), i * 5, np.uint8))  # each frame its own grey level
    assert writer.frames == 50 and writer.error is None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(stream) if p.size)
        assert [i for i, (_, key) in enumerate(packets) if key] == list(range(0, 50, 7))  # a keyframe per segment
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (w + w % 2, h + h % 2)  # odd sides padded for yuv420p
        grey = [f.to_ndarray(format="rgb24")[:h, :w].mean() for f in container.decode(stream)]
    assert len(grey) == 50 and np.abs(np.array(grey) - 5 * np.arange(50)).max() <= 2


def test_a_short_video_is_cut_so_that_every_encoder_gets_a_part(tmp_path):
    from rapidpose.video.writer import VideoWriter

    def segment(**kwargs):
        with VideoWriter(tmp_path / "v.mp4", 24, (64, 48), encoders=4, **kwargs) as writer:
            return writer.segment_frames

    assert segment() == 48 and segment(frame_count=1000) == 48  # two seconds
    assert segment(frame_count=72) == 18 and segment(frame_count=10) == 8  # no part of fewer than 8 frames


def test_a_gpu_batch_holds_32_frames_up_to_1080p_and_fewer_of_larger_ones():
    from rapidpose.video.pipeline import gpu_batch

    assert gpu_batch((426, 240)) == gpu_batch((1920, 1080)) == 32
    assert gpu_batch((2560, 1440)) == 18 and gpu_batch((3840, 2160)) == 8  # about 1080p's pixels a batch
    assert gpu_batch((7680, 4320)) == 4 and gpu_batch((0, 0)) == 32  # never fewer than 4; no size: no limit


def test_files_are_read_a_gpu_batch_ahead():
    for asked, ahead in ((None, 32), (5, 5)):
        source = open_source(BASKETBALL, read_ahead=asked)
        assert source._queue.maxsize == ahead
        source.close()


def test_a_frame_converts_its_i420_once_when_asked_and_checking_it_converts_nothing():
    yuv = cv2.cvtColor(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8), cv2.COLOR_RGB2YUV_I420)
    frame = Frame(3, 0.1, None, yuv=yuv)
    assert frame.ok and frame.size == (64, 48) and frame.yuv is yuv
    assert frame._image is None  # ok and size do not convert
    image = frame.image
    np.testing.assert_array_equal(image, cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420))
    assert frame.image is image and frame._image is image  # converted once, then kept
    turned = np.ascontiguousarray(np.rot90(image))
    frame.image = turned  # new pixels: the I420, now out of date, goes
    assert frame.image is turned and frame.yuv is None and frame.size == (48, 64)
    rgb = Frame(0, 0.0, image)  # the positional calls of before
    assert rgb.ok and rgb.size == (64, 48) and rgb.image is image and rgb.yuv is None and rgb.error is None
    bad = Frame(1, 0.5, None, "unreadable")
    assert not bad.ok and bad.size is None and bad.image is None and bad.error == "unreadable"
    assert not hasattr(frame, "__dict__")  # __slots__


@pytest.mark.parametrize("path", [BASKETBALL, TWO_PEOPLE], ids=["426x240", "1080p"])
def test_videos_come_as_i420_frames_whose_rgb_is_pyavs(path):
    with av.open(str(path)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), 5)]
    h, w = reference[0].shape[:2]
    source = open_source(path)
    assert source.size == (w, h)
    frames = list(itertools.islice(source, 5))
    source.close()
    assert [f.index for f in frames] == list(range(5))
    for frame, rgb in zip(frames, reference):
        assert frame.yuv is not None and frame.yuv.shape == (h * 3 // 2, w) and frame.yuv.dtype == np.uint8
        assert frame._image is None and frame.size == (w, h)  # nothing converted on the host so far
        assert np.abs(frame.image.astype(np.int16) - rgb).mean() < 2


def test_a_turned_source_gives_rgb_frames_of_the_turned_size():
    with av.open(str(BASKETBALL)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    source = open_source(BASKETBALL, rotate=90)
    assert source.size == (240, 426)
    frame = next(iter(source))
    source.close()
    assert frame.yuv is None and frame._image is not None and frame.size == (240, 426)
    np.testing.assert_array_equal(frame.image, cv2.rotate(first, cv2.ROTATE_90_CLOCKWISE))


def test_a_full_range_video_comes_as_rgb(tmp_path):
    path = tmp_path / "full.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"  # full range: not cv2's I420
        for i in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * i, np.uint8))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = list(open_source(path))
    assert len(frames) == 3 and all(f.yuv is None and f._image.shape == (48, 64, 3) for f in frames)
    assert [round(f.image.mean()) for f in frames] == pytest.approx([0, 60, 120], abs=3)


@pytest.mark.parametrize("mixed", [False, True], ids=["i420", "i420+rgb"])
def test_the_writer_encodes_i420_frames_as_they_are(tmp_path, mixed):
    from rapidpose.video.writer import VideoWriter

    w, h = 130, 72
    path = tmp_path / "i420.mp4"
    with VideoWriter(path, 30, (w, h), encoders=3, segment_frames=7) as writer:
        for i in range(40):
            rgb = np.full((h, w, 3), i * 6, np.uint8)  # each frame its own grey level
            writer.write(rgb if mixed and i % 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420))
    assert writer.frames == 40 and writer.error is None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (w, h)
        grey = [f.to_ndarray(format="rgb24").mean() for f in container.decode(stream)]
    assert len(grey) == 40 and np.abs(np.array(grey) - 6 * np.arange(40)).max() <= 3


def test_the_writer_checks_i420_frames(tmp_path):
    from rapidpose.video.writer import VideoWriter

    with VideoWriter(tmp_path / "even.mp4", 30, (64, 48)) as writer:
        with pytest.raises(InputError, match=r"expected uint8 \(72, 64\)"):
            writer.write(np.zeros((48, 64), np.uint8))
        with pytest.raises(InputError, match="expected uint8"):
            writer.write(np.zeros((72, 64), np.float32))
        writer.write(np.zeros((72, 64), np.uint8))
    assert writer.frames == 1
    with VideoWriter(tmp_path / "odd.mp4", 30, (65, 33)) as writer:
        with pytest.raises(InputError, match="even sides, pass RGB"):
            writer.write(np.zeros((49, 65), np.uint8))
        writer.write(np.zeros((33, 65, 3), np.uint8))
    assert writer.frames == 1


def test_the_mp4_frames_are_drawn_into_their_i420_in_place_and_rgb_frames_on_a_copy():
    from rapidpose.results import Poses
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.process import _draw

    yuv = cv2.cvtColor(np.full((120, 160, 3), 128, np.uint8), cv2.COLOR_RGB2YUV_I420)
    kps = np.array([[[40 + 4 * j, 20 + 5 * j] for j in range(17)]], np.float32)
    poses = Poses([[30, 10, 120, 110]], [0.9], kps, np.ones((1, 17)), SKELETONS["coco"], np.array([2]))
    frame = Frame(0, 0.0, None, yuv=yuv.copy())
    drawn = _draw(frame, poses)
    assert drawn is frame.yuv and frame._image is None and (drawn != yuv).any()  # no conversion, no copy
    converted = Frame(0, 0.0, None, yuv=yuv.copy())
    rgb = converted.image.copy()  # converted for the detector on the host: the I420 is still drawn into
    assert _draw(converted, poses) is converted.yuv
    rgb_only = Frame(0, 0.0, rgb)
    drawn = _draw(rgb_only, poses)
    assert drawn.shape == (120, 160, 3) and drawn is not rgb_only.image and (drawn != rgb).any()
    np.testing.assert_array_equal(rgb_only.image, rgb)  # the RGB was drawn on, on a copy


def test_a_video_goes_from_decoder_to_mp4_as_i420_with_its_drawing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import rapidpose.video.pipeline
    from rapidpose.draw.cpu import track_color
    from rapidpose.results import Poses
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.process import process_video

    poses = Poses([[100, 60, 300, 200]], [0.9], np.full((1, 17, 2), 150, np.float32), np.zeros((1, 17)),
                  SKELETONS["coco"], np.array([4]))
    seen = []

    def track_frames(est, source, *args, **kwargs):  # the pose work as on a GPU: the host converts nothing
        for frame in source:
            seen.append(frame)
            yield frame, poses

    monkeypatch.setattr(rapidpose.video.pipeline, "track_frames", track_frames)
    out = tmp_path / "out.mp4"
    stats = process_video(SimpleNamespace(skeleton=SKELETONS["coco"], on_gpu=False), open_source(BASKETBALL), out=str(out))
    assert stats["frames"] == 300 and len(seen) == 300
    assert all(f.yuv is not None and f._image is None for f in seen)  # drawn and encoded as I420
    codec, frames, _, w, h = video_info(out)
    assert (codec, frames, w, h) == ("h264", 300, 426, 240)
    with av.open(str(out)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first[120, 98:103] - track_color(4)).sum(axis=1).min() < 40  # the box's left edge, x = 100


def _moving_person(i, w=160, h=120):
    from rapidpose.results import Poses
    from rapidpose.skeletons import SKELETONS

    kps = np.array([[[30 + 2 * i + 4 * j, 10 + 5 * j] for j in range(17)]], np.float32)
    return Poses([[20 + 2 * i, 5, 110 + 2 * i, 100]], [0.9], kps, np.ones((1, 17)), SKELETONS["coco"], np.array([3]))


def decoded(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray() for f in container.decode(video=0)]


def test_the_drawing_process_writes_what_drawing_in_process_writes(tmp_path):
    """Same frames, same poses: the mp4 of the worker process decodes to the very frames of the mp4
    of frames drawn in this process (encoded by a fresh process: see the next test)."""
    import subprocess
    import sys

    from rapidpose.draw.cpu import draw_frame
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.drawing_process import DrawnVideo
    from rapidpose.video.sources import Frame

    frames = list(np.random.default_rng(0).integers(0, 256, (30, 180, 160), np.uint8))
    with DrawnVideo(tmp_path / "process.mp4", 25, (160, 120), SKELETONS["coco"], encoders=2, slots=4) as video:
        for i, yuv in enumerate(frames):
            video.write(Frame(i, i / 25, None, yuv=yuv), _moving_person(i))
    assert video.frames == 30 and video.error is None
    np.save(tmp_path / "drawn.npy", np.stack([draw_frame(yuv.copy(), _moving_person(i)) for i, yuv in enumerate(frames)]))
    subprocess.run([sys.executable, "-c", "import sys, numpy as np; from rapidpose.video.writer import VideoWriter\n"
                    "with VideoWriter(sys.argv[2], 25, (160, 120), encoders=2) as writer:\n"
                    "    for pixels in np.load(sys.argv[1]): writer.write(pixels)",
                    str(tmp_path / "drawn.npy"), str(tmp_path / "here.mp4")], check=True)
    process, here = decoded(tmp_path / "process.mp4"), decoded(tmp_path / "here.mp4")
    assert len(process) == 30
    for a, b in zip(process, here):
        np.testing.assert_array_equal(a, b)
    originals = np.random.default_rng(0).integers(0, 256, (30, 180, 160), np.uint8)
    np.testing.assert_array_equal(np.stack(frames), originals)  # the caller's frames are not drawn into


def test_frames_drawn_before_the_drawing_process_are_only_encoded(tmp_path):
    """A frame that comes drawn (track_frames(draw=True), on a GPU) is encoded as it is: the mp4 is the
    one of the same frames drawn by the drawing process, drawn once.

    Both files come from drawing processes: x264 in this process (after the other tests) has now and
    then encoded the first frames a little differently from a fresh process, all settings equal."""
    from rapidpose.draw.cpu import draw_frame
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.drawing_process import DrawnVideo

    frames = list(np.random.default_rng(1).integers(0, 256, (12, 180, 160), np.uint8))
    for name, drawn_here in (("drawn-here.mp4", True), ("drawn-there.mp4", False)):
        with DrawnVideo(tmp_path / name, 25, (160, 120), SKELETONS["coco"], encoders=1, slots=3) as video:
            for i, yuv in enumerate(frames):
                frame = Frame(i, i / 25, None, yuv=yuv)
                if drawn_here:
                    frame.drawn = draw_frame(yuv.copy(), _moving_person(i))
                video.write(frame, _moving_person(i))
    here, there = decoded(tmp_path / "drawn-here.mp4"), decoded(tmp_path / "drawn-there.mp4")
    assert len(here) == len(frames)
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tracking_can_hand_out_the_frames_drawn(estimator):
    """draw=True on the host path: each frame comes with a drawn copy, the frame itself untouched."""
    from rapidpose.draw.cpu import draw_frame
    from rapidpose.video.pipeline import track_frames

    seen = list(itertools.islice(track_frames(estimator, BASKETBALL, frames_per_batch=4, draw=True), 10))
    assert sum(len(p) for _, p in seen) > 0
    for frame, poses in seen:
        assert frame.drawn is not frame.yuv
        np.testing.assert_array_equal(frame.drawn, draw_frame(frame.yuv.copy(), poses))
        assert (frame.drawn != frame.yuv).any() == (len(poses) > 0)


def test_a_worker_started_ahead_is_the_next_videos(tmp_path):
    from rapidpose.video import drawing_process
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.drawing_process import DrawnVideo, start_worker

    start_worker()
    start_worker(wait=True)  # one spare at most; ready once its imports are done
    assert len(drawing_process._SPARE) == 1 and drawing_process._SPARE[0][0].poll() is None
    spare = drawing_process._SPARE[0][0]
    with DrawnVideo(tmp_path / "v.mp4", 25, (64, 48), SKELETONS["coco"], encoders=1) as video:
        assert video._process is spare and not drawing_process._SPARE
        video.write(Frame(0, 0.0, np.zeros((48, 64, 3), np.uint8)), _moving_person(0))
    assert video.frames == 1 and spare.returncode == 0


def test_a_drawing_process_that_dies_is_reported_not_waited_for(tmp_path):
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.drawing_process import DrawnVideo
    from rapidpose.video.sources import Frame

    video = DrawnVideo(tmp_path / "out.mp4", 25, (64, 48), SKELETONS["coco"], slots=2)
    rgb = np.zeros((48, 64, 3), np.uint8)
    video.write(Frame(0, 0.0, rgb), _moving_person(0))
    video._process.kill()
    with pytest.raises(InputError, match="drawing process stopped"):
        for i in range(1, 50):
            video.write(Frame(i, 0.0, rgb), _moving_person(0))
    video.close()
    assert video.error
    with pytest.raises(InputError, match="one size"):
        other = DrawnVideo(tmp_path / "other.mp4", 25, (64, 48), SKELETONS["coco"])
        try:
            other.write(Frame(0, 0.0, rgb), _moving_person(0))
            other.write(Frame(1, 0.0, np.zeros((40, 64, 3), np.uint8)), _moving_person(0))
        finally:
            other.close()


def test_a_path_the_drawing_process_cannot_write_is_reported_at_the_next_frame(tmp_path):
    from rapidpose.skeletons import SKELETONS
    from rapidpose.video.drawing_process import DrawnVideo
    from rapidpose.video.sources import Frame

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    video = DrawnVideo(blocker / "out.mp4", 25, (64, 48), SKELETONS["coco"], slots=2)
    with pytest.raises(InputError, match="out.mp4' failed"):
        for i in range(50):
            video.write(Frame(i, 0.0, np.zeros((48, 64, 3), np.uint8)), _moving_person(0))
    video.close()
    assert video.frames == 0 and video.error
