"""RTMDet run by PyTorch on batches of frames (the GPU video path), against the ONNX export run by
onnxruntime; the I420 -> RGB conversion on the device; the video path that uses both."""
import av
import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import ASSETS, INTERPRETED_TRITON, RTMDET, assert_drawn_like

from rapidpose import PoseEstimator
from rapidpose.detect import load_detector
from rapidpose.detect.base import nms
from rapidpose.detect.onnx_graph import OnnxConvNet
from rapidpose.detect.rtmdet_torch import BatchedRTMDet
from rapidpose.draw.cpu import draw_frame
from rapidpose.errors import CheckpointError
from rapidpose.io import read_image
from rapidpose.topdown.geometry import box_iou
from rapidpose.topdown.gpu_ops import i420_to_rgb
from rapidpose.video.pipeline import _DeviceStage, _HostStage, track_frames

PHOTOS = sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg"))
BASKETBALL = ASSETS / "video" / "basketball-426x240.mp4"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def rtmdet():
    return load_detector(RTMDET, threshold=0.1)


def as_batch(images, device="cpu"):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(device)


def decoded_frames(path, count, fmt=None):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format=fmt) if fmt else f.to_ndarray()
                for _, f in zip(range(count), container.decode(video=0))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_graph_run_by_torch_gives_the_exports_own_detections_for_the_same_input(rtmdet, device):
    batched = BatchedRTMDet(rtmdet, device)
    total = 0
    for path in PHOTOS:
        x, _ = batched.letterbox(as_batch([read_image(path)], device))
        dets = rtmdet.session.run(None, {rtmdet.input_name: x.cpu().numpy()})[0][0]
        dets = dets[dets[:, 4] > 0.1]
        scores, boxes = batched._decode(batched._run(x))
        keep = scores[0] > 0.1
        s, b = scores[0][keep].cpu().numpy(), boxes[0][keep].cpu().numpy()
        kept = nms(b, s, 0.6)
        assert len(kept) == len(dets)
        np.testing.assert_allclose(s[kept], dets[:, 4], atol=1e-4)
        np.testing.assert_allclose(b[kept], dets[:, :4], atol=0.02)  # letterbox pixels
        total += len(dets)
    assert total > 40  # crowded photos: the comparison covers many boxes


@pytest.mark.parametrize("device", DEVICES)
def test_batched_detections_match_the_onnxruntime_detector_photo_by_photo(rtmdet, device):
    batched = BatchedRTMDet(rtmdet, device)
    for path in PHOTOS:
        image = read_image(path)
        ref_boxes, ref_scores = rtmdet(image)
        boxes, scores = batched(as_batch([image], device), 0.1)[0]
        confident = ref_scores > 0.3  # near the threshold a box may fall either side
        iou = box_iou(ref_boxes[confident], boxes)
        best = iou.argmax(1)
        assert (iou.max(1) > 0.97).all()
        # cv2 resizes uint8 in fixed point, torch in float: scores move by a few thousandths
        np.testing.assert_allclose(scores[best], ref_scores[confident], atol=0.01)
        assert abs(len(boxes) - len(ref_boxes)) <= 2


def test_a_batch_of_frames_gives_what_each_frame_gives_alone(rtmdet):
    frames = decoded_frames(BASKETBALL, 5, "rgb24")
    batched = BatchedRTMDet(rtmdet, "cpu")
    together = batched(as_batch(frames), 0.3)
    assert sum(len(b) for b, _ in together) >= 5
    for frame, (boxes, scores) in zip(frames, together):
        alone_boxes, alone_scores = batched(as_batch([frame]), 0.3)[0]
        np.testing.assert_allclose(boxes, alone_boxes, atol=1e-3)
        np.testing.assert_allclose(scores, alone_scores, atol=1e-5)
        assert (boxes[:, 2] <= 426).all() and (boxes[:, 3] <= 240).all() and (np.diff(-scores) >= 0).all()


def test_an_operator_the_torch_runner_lacks_is_named(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="odd")], "g", [x], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(CheckpointError, match="Erf"):
        OnnxConvNet(path, ["y"])


@pytest.mark.parametrize("device", DEVICES)
def test_i420_to_rgb_gives_cv2s_bytes(device):
    noise = np.random.default_rng(0).integers(0, 256, (2, 360, 426), np.uint8)  # every value, chroma width odd
    for batch in (np.stack(decoded_frames(BASKETBALL, 3)), noise, noise[:, :6, :4]):
        got = i420_to_rgb(torch.from_numpy(batch).to(device)).permute(0, 2, 3, 1).cpu().numpy()
        for frame, rgb in zip(batch, got, strict=True):
            np.testing.assert_array_equal(rgb, cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420))


@pytest.mark.skipif(not INTERPRETED_TRITON, reason="with a GPU the test above runs the kernel compiled")
def test_the_i420_kernel_by_triton_s_interpreter_gives_cv2s_bytes():
    from rapidpose.topdown.gpu_ops import _i420_kernel

    batch = np.random.default_rng(1).integers(0, 256, (2, 30, 26), np.uint8)  # 20x26: chroma width odd
    rgb = torch.empty((2, 3, 20, 26), dtype=torch.float32)
    _i420_kernel()(torch.from_numpy(batch), rgb, 26, 20)  # 520 pixels: one program, partly inside
    for frame, got in zip(batch, rgb.permute(0, 2, 3, 1).numpy(), strict=True):
        np.testing.assert_array_equal(got, cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420))


def test_the_device_path_tracks_like_the_host_path(tiny_checkpoint):
    """The GPU video path, run on the CPU: frames uploaded as I420 and converted by torch, RTMDet on
    the batch, crops from the uploaded frames. Same people and tracks as the host path; keypoints as
    close as the detector's boxes are (its resize differs from cv2's by a level here and there)."""
    est = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    host = list(track_frames(est, BASKETBALL, frames_per_batch=8))[:60]
    est.on_gpu = True  # what a CUDA runtime sets; the stage then runs on the runtime's device
    device = []
    for frame, poses in track_frames(est, BASKETBALL, frames_per_batch=8, draw=True):
        device.append((frame, poses))
        if len(device) == 60:
            break
    assert all(f.yuv is not None for f, _ in device)
    for frame, poses in device[::7]:  # drawn into the uploaded frames: by cv2 on a CPU, gpu_draw's kernel on a GPU
        if est.runtime.device != "cpu":  # (cv2's pictures are the kernel's: test_gpu_draw, in the interpreter)
            assert_drawn_like(frame.drawn, draw_frame(frame.yuv.copy(), poses), frame.yuv, f"frame {frame.index}")
        # these people in this frame: each box's sides and each joint drawn where they are, nothing far off
        h, w = frame.yuv.shape[0] * 2 // 3, frame.yuv.shape[1]
        changed = frame.drawn != frame.yuv
        luma, chroma = changed[:h], changed[h:].reshape(2, h // 2, w // 2)
        near = np.zeros((h, w), bool)  # within 16 pixels of a person's box or joints (its label goes above)
        for box, keypoints, scores in zip(poses.boxes, poses.keypoints, poses.keypoint_scores):
            joints = np.round(keypoints[scores > 0.3]).astype(int)
            points = np.vstack([box.reshape(2, 2), joints])
            (x1, y1), (x2, y2) = np.maximum(points.min(0).astype(int) - 16, 0), points.max(0).astype(int) + 16
            near[y1:y2 + 1, x1:x2 + 1] = True
            (x1, y1), (x2, y2) = np.round(box.reshape(2, 2)).astype(int)
            for x in (x1, x2):
                assert not 0 <= x < w or luma[max(y1, 0) + 3:y2 - 2, x].mean() > 0.9, f"frame {frame.index}: {box}"
            joints = joints[(joints >= 0).all(1) & (joints < (w, h)).all(1)]
            assert (luma[joints[:, 1], joints[:, 0]] | chroma[:, joints[:, 1] // 2, joints[:, 0] // 2].any(0)).all()
        far = ~near.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
        assert not (luma & ~near).any() and not (chroma & far).any(), f"frame {frame.index}: drawn off the people"
    people = [(len(a), len(b)) for (_, a), (_, b) in zip(host, device)]
    assert sum(a == b for a, b in people) >= 57 and sum(a for a, _ in people) >= 100
    ious, shifts = [], []
    for (_, a), (_, b) in zip(host, device):
        if len(a) == len(b) and len(a):
            iou = box_iou(a.boxes, b.boxes)
            pair = iou.argmax(1)
            ious += iou.max(1).tolist()
            shifts.append(np.median(np.abs(a.keypoints - b.keypoints[pair])))
            assert (a.track_ids == b.track_ids[pair]).all()
    # a weak box (score 0.2) among overlapping candidates may come out of NMS a little different
    assert np.percentile(ious, 5) > 0.98 and min(ious) > 0.7
    assert np.median(shifts) < 0.2 and max(shifts) < 5


def test_the_stage_follows_where_the_network_runs(tiny_checkpoint):
    est = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    from rapidpose.video.pipeline import _make_stage

    stage = _make_stage(est, 0.1, None)
    assert isinstance(stage, _HostStage)
    stage.close()
    est.on_gpu = True
    stage = _make_stage(est, 0.1, None)
    assert isinstance(stage, _DeviceStage) and stage.detector is not None
    stage.close()
    est.detector = load_detector(ASSETS / "detectors" / "yolox-nano.onnx")  # no batched version: host
    stage = _make_stage(est, 0.1, None)
    assert isinstance(stage, _HostStage)
    stage.close()
