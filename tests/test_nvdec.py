"""Decoding on the GPU (NVDEC): FFmpeg's frames exactly, used only where it can be, and said why not."""
import json

import numpy as np
import pytest
import torch
from conftest import ASSETS, RTMDET
from test_video import faststart_copy, video_info

from rapidpose import PoseEstimator
from rapidpose.cli import main
from rapidpose.video.nvdec import nv12_to_i420, unavailable
from rapidpose.video.pipeline import track_frames
from rapidpose.video.sources import i420_planes, open_source

BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
TWO_PEOPLE = ASSETS / "video" / "two-people-1080p.mp4"
NVDEC = unavailable()
needs_nvdec = pytest.mark.skipif(NVDEC is not None, reason=f"needs NVDEC: {NVDEC}")


def test_nv12_becomes_i420_with_the_same_planes():
    frames = np.random.default_rng(0).integers(0, 256, (3, 240 * 3 // 2, 426), np.uint8)
    nv12 = []
    for yuv in frames:
        y, u, v = i420_planes(yuv)
        nv12.append(np.concatenate([y, np.stack([u, v], -1).reshape(120, 426)]))
    np.testing.assert_array_equal(nv12_to_i420(torch.from_numpy(nv12[1])).numpy(), frames[1])
    np.testing.assert_array_equal(nv12_to_i420(torch.from_numpy(np.stack(nv12))).numpy(), frames)  # a batch


def test_a_source_says_why_it_is_not_decoded_on_the_gpu_and_still_reads(tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    assert "only video files" in open_source(tmp_path).decode_on_gpu(torch.device("cuda"))
    turned = open_source(BASKETBALL, rotate=90)  # RGB frames: not what NVDEC gives
    assert "not 8-bit I420" in turned.decode_on_gpu(torch.device("cuda"))
    if NVDEC is None:
        return
    source = open_source(BASKETBALL)
    assert source.decode_on_gpu(torch.device("cpu")) is not None  # not a CUDA device: nothing changes
    first = next(iter(source))
    assert isinstance(first.yuv, np.ndarray) and first.index == 0


@pytest.mark.skipif(NVDEC is None, reason="NVDEC is there: this is the machine without it")
def test_without_nvdec_the_source_keeps_ffmpeg():
    source = open_source(BASKETBALL)
    assert source.decode_on_gpu(torch.device("cuda")) == NVDEC
    plain = open_source(BASKETBALL)
    for a, b, _ in zip(source, plain, range(5)):
        assert a.index == b.index and np.array_equal(a.yuv, b.yuv)


def test_asking_for_nvdec_where_the_frames_stay_on_the_host_is_a_clear_error(tiny_checkpoint, tmp_path, caplog):
    code = main(["video", str(BASKETBALL), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--device", "cpu", "--decoder", "nvdec", "--json", str(tmp_path / "out.json")])
    assert code == 2 and "--decoder nvdec" in caplog.text and "--decoder ffmpeg" in caplog.text


@pytest.mark.gpu
@needs_nvdec
@pytest.mark.parametrize("video", [BASKETBALL, TWO_PEOPLE], ids=["426x240", "1080p"])
def test_nvdec_frames_are_ffmpegs_frames(video):
    cpu = [(f.index, f.time, f.yuv.copy()) for f in open_source(video)]
    source = open_source(video)
    assert source.decode_on_gpu(torch.device("cuda")) is None
    gpu = [(f.index, f.time, f.yuv) for f in source]
    assert source.error is None and len(gpu) == len(cpu) and all(y.is_cuda for _, _, y in gpu)
    for (i, t, a), (j, u, b) in zip(cpu, gpu):
        assert i == j and t == pytest.approx(u, abs=1e-6)
        np.testing.assert_array_equal(b.cpu().numpy(), a)


@pytest.mark.gpu
@needs_nvdec
def test_a_truncated_video_decoded_on_the_gpu_keeps_the_frames_before_the_cut(tmp_path):
    whole = tmp_path / "whole.mp4"
    faststart_copy(BASKETBALL, whole)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    source = open_source(cut)
    assert source.decode_on_gpu(torch.device("cuda")) is None
    gpu = [f.yuv.cpu().numpy() for f in source]
    assert 100 < len(gpu) < 300 and "truncated" in source.error
    cpu = [f.yuv for f, _ in zip(open_source(cut), range(len(gpu) - 20))]
    for a, b in zip(cpu, gpu):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@needs_nvdec
def test_tracking_on_nvdec_frames_gives_the_poses_and_drawing_of_ffmpeg_frames(tiny_checkpoint, tmp_path):
    est = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32", device="cuda")
    runs = {}
    for decoder in ("ffmpeg", "nvdec"):
        runs[decoder] = [(f.index, f.time, p, f.drawn.copy()) for f, p in track_frames(est, BASKETBALL, draw=True,
                                                                                       decoder=decoder)]
    assert len(runs["nvdec"]) == len(runs["ffmpeg"]) == 300
    for (i, t, a, da), (j, u, b, db) in zip(runs["ffmpeg"], runs["nvdec"]):
        assert i == j and t == pytest.approx(u, abs=1e-6) and len(a) == len(b)
        np.testing.assert_array_equal(a.track_ids, b.track_ids)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-2)
        assert np.mean(da != db) < 1e-3, f"frame {i} drawn differently"
    out, js = tmp_path / "out.mp4", tmp_path / "out.json"
    code = main(["video", str(TWO_PEOPLE), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--device", "cuda", "--decoder", "nvdec", "--out", str(out), "--json", str(js)])
    codec, frames, _, w, h = video_info(out)
    assert code == 0 and (codec, frames, w, h) == ("h264", 72, 1920, 1080)
    assert len(json.loads(js.read_text())["frames"]) == 72
