"""UDP Gaussian training targets and the weighted MSE loss, against the official algorithm and the decoder."""
import math

import numpy as np
import pytest
import torch

from rapidpose.errors import InputError
from rapidpose.topdown.decode import decode_heatmaps
from rapidpose.train.targets import keypoint_mse_loss, udp_heatmaps

INPUT = np.array([192, 256])
HEATMAP = np.array([48, 64])
STRIDE = (INPUT - 1.0) / (HEATMAP - 1.0)


def official_udp_target(joints, visible, sigma=2):
    """mmpose 0.x _udp_generate_target (GaussianHeatmap) written out per joint: the window of the rounded
    centre cut from a (6 sigma + 1)^2 patch of the sub-pixel Gaussian, Python int() truncation included."""
    w_map, h_map = HEATMAP
    target = np.zeros((len(joints), h_map, w_map), np.float32)
    weight = (np.asarray(visible) > 0).astype(np.float32)
    radius = sigma * 3
    size = 2 * radius + 1
    grid = np.arange(0, size, 1, np.float32)
    for j, (x, y) in enumerate(joints):
        mu_x, mu_y = int(x / STRIDE[0] + 0.5), int(y / STRIDE[1] + 0.5)
        ul = [int(mu_x - radius), int(mu_y - radius)]
        br = [int(mu_x + radius + 1), int(mu_y + radius + 1)]
        if ul[0] >= w_map or ul[1] >= h_map or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        x0 = size // 2 + x / STRIDE[0] - mu_x
        y0 = size // 2 + y / STRIDE[1] - mu_y
        g = np.exp(-((grid - x0) ** 2 + (grid[:, None] - y0) ** 2) / (2 * sigma ** 2))
        gx = max(0, -ul[0]), min(br[0], w_map) - ul[0]
        gy = max(0, -ul[1]), min(br[1], h_map) - ul[1]
        ix = max(0, ul[0]), min(br[0], w_map)
        iy = max(0, ul[1]), min(br[1], h_map)
        if weight[j] > 0.5:
            target[j, iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target, weight


def test_maps_equal_the_official_per_joint_algorithm():
    rng = np.random.default_rng(0)
    # inside, at the border, in the margin where only part of the window remains, and far outside
    joints = rng.uniform(-50, 300, (1, 400, 2))
    joints[0, :8] = [[0, 0], [191, 255], [-3.2, 100], [194.9, 7.4], [-32.4, 20], [-28.3, 20], [220.7, 9], [50, -40]]
    visible = (rng.random((1, 400)) > 0.2).astype(np.float32)
    maps, weights = udp_heatmaps(joints, visible)
    want, want_weights = official_udp_target(joints[0], visible[0])
    assert maps.dtype == np.float32 and weights.dtype == np.float32
    assert maps.shape == (1, 400, 64, 48) and weights.shape == (1, 400)
    np.testing.assert_array_equal(weights[0], want_weights)
    np.testing.assert_allclose(maps[0], want, rtol=0, atol=1e-6)
    # the sample covers every case: drawn whole, cut by the border, dropped, invisible
    drawn = maps[0].reshape(400, -1).max(axis=1)
    assert ((drawn > 0.5) & (weights[0] == 1)).any() and ((drawn < 0.5) & (drawn > 0) & (weights[0] == 1)).any()
    assert ((weights[0] == 0) & (visible[0] > 0)).any() and ((weights[0] == 0) & (visible[0] == 0)).any()


def test_window_truncation_and_weights():
    sigma = 2.0
    # heatmap x whose rounded centre mu_x = int(x + 0.5) is 10, 0, -6, -7, -8 and 53, 54 (int() truncates
    # towards zero: -6.5 rounds to -6); the map is 48 wide
    centres = np.array([10.3, 0, -6.5, -7.5, -8.5, 53, 54])
    joints = np.stack([centres * STRIDE[0], np.full(len(centres), 30.4 * STRIDE[1])], -1)[None]
    maps, weights = udp_heatmaps(joints, np.ones((1, len(centres))), sigma=sigma)
    columns = [np.flatnonzero(m.any(axis=0)) for m in maps[0]]
    assert columns[0].tolist() == list(range(4, 17))  # the 13-pixel window, nothing beyond it
    assert np.flatnonzero(maps[0, 0].any(axis=1)).tolist() == list(range(24, 37))
    assert columns[1].tolist() == list(range(0, 7))  # cut at the left edge
    assert columns[2].tolist() == [0]  # the window's last column is the map's first
    # mu = -7: the window ends just before column 0; the official test (br < 0) still keeps weight 1
    assert columns[3].size == 0 and weights[0, 3] == 1
    assert columns[4].size == 0 and weights[0, 4] == 0
    assert columns[5].tolist() == [47] and weights[0, 5] == 1  # ul = 47: the last column remains
    assert columns[6].size == 0 and weights[0, 6] == 0  # ul = 48: beyond the map
    # inside the window, the values are the Gaussian at the sub-pixel centre, not at mu
    ys, xs = np.mgrid[0:64, 0:48]
    exact = np.exp(-((xs - joints[0, 0, 0] / STRIDE[0]) ** 2 + (ys - 30.4) ** 2) / (2 * sigma ** 2))
    inside = (np.abs(xs - 10) <= 6) & (np.abs(ys - 30) <= 6)
    np.testing.assert_allclose(maps[0, 0], np.where(inside, exact, 0), atol=1e-6)


def test_invisible_keypoints_have_no_map_and_no_weight():
    joints = np.array([[[100.0, 120.0], [50.0, 60.0], [10.0, 10.0]]])
    maps, weights = udp_heatmaps(joints, np.array([[0, 2, -1]]))
    assert weights.tolist() == [[0, 1, 0]]
    assert not maps[0, 0].any() and not maps[0, 2].any() and maps[0, 1].max() > 0.9


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.5, 0.5), (0.37, -0.21), (-0.49, 0.13)])
def test_decoder_recovers_the_sub_pixel_keypoint(dx, dy):
    """Round trip through rapidpose's DARK-UDP decoder, with a crop that is the image itself."""
    size = INPUT - 1.0
    center, scale = (size / 2)[None].astype(np.float32), (size / 200)[None].astype(np.float32)
    # heatmap positions from 6 pixels off the border (the reach of the decoder's 11-tap blur) inwards
    grid = np.array([[6, 6], [41, 57], [6, 57], [41, 6], [23, 31], [6, 30], [24, 57], [17.3, 44.8]])
    keypoints = ((grid + [dx, dy]) * STRIDE)[None]
    maps, _ = udp_heatmaps(keypoints, np.ones((1, len(grid))))
    decoded, scores = decode_heatmaps(maps, center, scale)
    assert np.abs(decoded - keypoints).max() < 0.05
    assert (scores > 0.88).all()


def test_the_map_is_centred_at_the_sub_pixel_keypoint_up_to_the_border():
    """Near the border the decoder's blur is biased; the map itself is still the exact Gaussian there:
    log g(x + 1) - log g(x - 1) = -2 (x - centre) / sigma^2 recovers the centre from 3 pixels."""
    sigma = 2.0
    rng = np.random.default_rng(1)
    grid = np.concatenate([rng.uniform(1, 2, (20, 2)), rng.uniform([45, 61], [46, 62], (20, 2)), [[1, 62], [46, 1]]])
    keypoints = (grid * STRIDE)[None]
    maps, _ = udp_heatmaps(keypoints, np.ones((1, len(grid))), sigma=sigma)
    for k, (x, y) in enumerate(grid):
        px, py = int(round(x)), int(round(y))
        m = maps[0, k].astype(np.float64)
        cx = px + sigma ** 2 / 2 * np.log(m[py, px + 1] / m[py, px - 1])
        cy = py + sigma ** 2 / 2 * np.log(m[py + 1, px] / m[py - 1, px])
        assert abs(cx - x) < 1e-4 and abs(cy - y) < 1e-4, (k, x, y, cx, cy)


def test_torch_gives_the_numpy_maps():
    rng = np.random.default_rng(2)
    joints = rng.uniform(-40, 290, (6, 17, 2)).astype(np.float32)
    visible = rng.integers(0, 3, (6, 17))
    maps, weights = udp_heatmaps(joints, visible)
    t_maps, t_weights = udp_heatmaps(torch.from_numpy(joints), torch.from_numpy(visible))
    assert isinstance(t_maps, torch.Tensor) and t_maps.dtype == torch.float32 and t_maps.device.type == "cpu"
    np.testing.assert_array_equal(t_weights.numpy(), weights)
    np.testing.assert_allclose(t_maps.numpy(), maps, rtol=0, atol=1e-6)
    # float64 keypoints and numpy visibility work too, and other sizes and sigmas agree as well
    t_maps, _ = udp_heatmaps(torch.from_numpy(joints).double(), visible, (288, 384), (72, 96), 3.0)
    np.testing.assert_allclose(t_maps.numpy(), udp_heatmaps(joints, visible, (288, 384), (72, 96), 3.0)[0], atol=1e-6)


def test_shapes_are_checked():
    with pytest.raises(InputError, match="keypoints must be"):
        udp_heatmaps(np.zeros((2, 17, 3)), np.ones((2, 17)))
    with pytest.raises(InputError, match="visible must be"):
        udp_heatmaps(np.zeros((2, 17, 2)), np.ones((2, 16)))
    with pytest.raises(InputError, match="visible must be"):
        udp_heatmaps(torch.zeros(2, 17, 2), torch.ones(17))
    with pytest.raises(InputError, match="sigma"):
        udp_heatmaps(np.zeros((2, 17, 2)), np.ones((2, 17)), sigma=0)
    with pytest.raises(InputError, match="weights must be"):
        keypoint_mse_loss(torch.zeros(2, 17, 8, 6), torch.zeros(2, 17, 8, 6), torch.ones(2, 16))


def test_loss_is_the_official_joints_mse_loss():
    torch.manual_seed(0)
    pred, target = torch.rand(4, 17, 64, 48), torch.rand(4, 17, 64, 48)
    weights = (torch.rand(4, 17) > 0.3).float()
    criterion = torch.nn.MSELoss()
    want = 0.0
    for k in range(17):  # JointsMSELoss(use_target_weight=True).forward, joint by joint
        w = weights[:, k, None]
        want += criterion(pred[:, k].reshape(4, -1) * w, target[:, k].reshape(4, -1) * w)
    want = want / 17
    got = keypoint_mse_loss(pred, target, weights)
    assert got.shape == () and math.isclose(got.item(), want.item(), rel_tol=1e-6)
    assert math.isclose(keypoint_mse_loss(pred, target, weights[..., None]).item(), want.item(), rel_tol=1e-6)
    # an unweighted keypoint does not count, but still divides: the mean is over all keypoints
    pred2 = pred.clone()
    pred2[weights == 0] += 5.0
    assert math.isclose(keypoint_mse_loss(pred2, target, weights).item(), want.item(), rel_tol=1e-6)
    pred.requires_grad_(True)
    keypoint_mse_loss(pred, target, weights).backward()
    assert (pred.grad[weights == 0] == 0).all() and pred.grad.abs().sum() > 0
