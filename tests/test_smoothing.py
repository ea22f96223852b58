import numpy as np
import pytest

from rapidpose.errors import InputError
from rapidpose.video.smoothing import KeypointSmoother, OneEuroFilter

FPS = 30.0


def _smooth(filter_, samples, fps=FPS):
    return np.array([filter_(x, i / fps) for i, x in enumerate(samples)])


def _still_noisy(sigma=1.0, seconds=10, k=100, seed=0):
    return 100.0 + np.random.default_rng(seed).normal(0, sigma, (int(seconds * FPS), 1, k, 2))


def test_the_first_sample_is_returned_unchanged():
    x = np.random.default_rng(0).normal(0, 50, (4, 3)).astype(np.float32)
    out = OneEuroFilter(beta=0.1)(x, 12.5)
    assert out.dtype == np.float32 and out is not x
    np.testing.assert_array_equal(out, x)


def test_without_beta_it_is_the_textbook_low_pass():
    x = _still_noisy()
    y = _smooth(OneEuroFilter(min_cutoff=1.0, beta=0.0), x)
    alpha = 1 / (1 + FPS / (2 * np.pi))  # 1 Hz at 30 fps
    expected = np.sqrt(alpha / (2 - alpha))  # std of an exponential filter over white noise: 0.310
    ratio = (y[30:] - 100).std() / (x[30:] - 100).std()
    assert ratio == pytest.approx(expected, rel=0.05)


def test_default_smoother_cuts_still_jitter_to_a_third():
    x = _still_noisy(sigma=1.0)  # 1 px of noise on 200 still keypoint coordinates for 10 s
    smoother = KeypointSmoother()
    y = np.array([smoother([7], kps, i / FPS) for i, kps in enumerate(x)])
    ratio = (y[30:] - 100).std() / (x[30:] - 100).std()
    assert ratio < 1 / 3  # measured 0.30


@pytest.mark.parametrize("speed, most", [(300.0, 4.5), (1000.0, 5.5)])
def test_default_smoother_lags_fast_motion_by_a_few_pixels(speed, most):
    t = np.arange(int(3 * FPS)) / FPS
    x = np.stack([speed * t, np.full_like(t, 50.0)], axis=-1)[:, None, None, :]  # one keypoint moving right
    smoother = KeypointSmoother()
    y = np.array([smoother([1], kps, ti) for kps, ti in zip(x, t)])
    lag = x[-1, 0, 0, 0] - y[-1, 0, 0, 0]
    assert y[-1, 0, 0, 1] == pytest.approx(50.0)
    # measured 3.7 px at 300 px/s and 4.6 px at 1000 px/s (1 / (2 pi beta) = 5.3 px at most);
    # a plain 0.5 Hz low-pass lags speed / (2 pi 0.5): 95 and 318 px
    assert 0.5 < lag < most
    plain = OneEuroFilter(min_cutoff=0.5, beta=0.0)
    plain_lag = speed * t[-1] - _smooth(plain, speed * t)[-1]
    assert plain_lag > 10 * lag


def test_filtering_an_array_equals_filtering_each_element():
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(0, 5, (20, 3, 4, 2)), axis=0)
    whole = _smooth(OneEuroFilter(0.8, 0.05, 1.2), walk)
    for index in [(0, 0, 0), (1, 2, 1), (2, 3, 0)]:
        single = _smooth(OneEuroFilter(0.8, 0.05, 1.2), walk[(slice(None), *index)])
        np.testing.assert_allclose(whole[(slice(None), *index)], single, rtol=1e-12)
    assert not np.allclose(whole[1:], walk[1:])  # it did filter


def test_a_repeated_time_counts_as_one_frame_of_the_last_step():
    x = np.random.default_rng(2).normal(0, 3, (4, 5))
    repeated = OneEuroFilter(beta=0.05)
    steady = OneEuroFilter(beta=0.05)
    a = [repeated(v, t) for v, t in zip(x, [0.0, 0.1, 0.1, 0.2])]
    b = [steady(v, t) for v, t in zip(x, [0.0, 0.1, 0.2, 0.3])]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    first = OneEuroFilter()
    first(x[0], 5.0)
    backwards = first(x[1], 4.0)  # before any real step: 1/30 s
    reference = OneEuroFilter()
    reference(x[0], 0.0)
    np.testing.assert_allclose(backwards, reference(x[1], 1 / 30), rtol=1e-12)


def test_one_euro_refuses_bad_settings_and_a_change_of_shape():
    with pytest.raises(InputError, match="min_cutoff > 0"):
        OneEuroFilter(min_cutoff=0)
    with pytest.raises(InputError, match="beta >= 0"):
        KeypointSmoother(beta=-1)
    f = OneEuroFilter()
    f(np.zeros((17, 2)), 0.0)
    with pytest.raises(InputError, match=r"shape \(17, 2\) and now \(5, 2\)"):
        f(np.zeros((5, 2)), 0.1)
    f.reset()
    np.testing.assert_array_equal(f(np.ones((5, 2)), 0.2), np.ones((5, 2)))


def _frames(n=12, k=17, seed=3):
    rng = np.random.default_rng(seed)
    return 200 + np.cumsum(rng.normal(0, 4, (n, 3, k, 2)), axis=0).astype(np.float32)


def test_each_track_has_its_own_filter_and_untracked_people_pass_through():
    kps = _frames()
    together, alone = KeypointSmoother(), KeypointSmoother()
    for f, frame in enumerate(kps):
        order = [0, 1, 2] if f % 2 else [2, 0, 1]  # people come in any order
        ids = np.array([4, 9, -1])[order]
        out = together(ids, frame[order], f / FPS)
        assert out.dtype == np.float32 and out.shape == (3, 17, 2)
        np.testing.assert_array_equal(out[order.index(2)], frame[2])  # id -1 unchanged
        np.testing.assert_allclose(out[order.index(0)], alone([4], frame[:1], f / FPS)[0], rtol=1e-6)
    assert not np.allclose(out[order.index(1)], frame[1])  # the tracked ones were smoothed


@pytest.mark.parametrize("gap, fresh", [(3, False), (4, True)])
def test_a_track_unseen_for_more_than_max_age_frames_starts_afresh(gap, fresh):
    kps = _frames(n=5 + gap + 1)[:, :1]
    smoother = KeypointSmoother(max_age=3)
    t = 0.0
    for f, frame in enumerate(kps):
        t += 1 / FPS
        if 5 <= f < 5 + gap:
            smoother([2], kps[f, :, ::-1].copy(), t)  # someone else meanwhile (id 2)
            continue
        out = smoother([1], frame, t)
    assert np.array_equal(out, kps[-1]) == fresh


def test_keypoint_smoother_names_bad_input():
    smoother = KeypointSmoother()
    with pytest.raises(InputError, match=r"keypoints must be \(N, K, 2\) with N = len\(track_ids\) = 2"):
        smoother([1, 2], np.zeros((3, 17, 2)), 0.0)
    with pytest.raises(InputError, match=r"keypoints must be \(N, K, 2\)"):
        smoother([1], np.zeros((1, 17, 3)), 0.0)
    with pytest.raises(InputError, match="repeat an id"):
        smoother([5, 5], np.zeros((2, 17, 2)), 0.0)
    with pytest.raises(InputError, match="must be integers"):
        smoother([1.5], np.zeros((1, 17, 2)), 0.0)
    assert smoother([], np.zeros((0, 17, 2)), 0.0).shape == (0, 17, 2)
