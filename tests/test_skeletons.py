import numpy as np
import pytest

from rapidpose.skeletons import COCO, SKELETONS, VITPOSE_PLUS_DATASETS, get_skeleton, skeleton_for

ALL = sorted(SKELETONS)


def _mirror(name: str) -> str:
    if "left" in name:
        return name.replace("left", "right")
    if "right" in name:
        return name.replace("right", "left")
    return name


@pytest.mark.parametrize("name", ALL)
def test_registered_under_its_own_name(name):
    assert SKELETONS[name].name == name
    assert get_skeleton(name) is SKELETONS[name]
    assert len(set(SKELETONS[name].keypoints)) == SKELETONS[name].num_keypoints  # names unique


@pytest.mark.parametrize("name", ALL)
def test_flip_pairs_are_an_involution_from_left_to_right(name):
    s = SKELETONS[name]
    k = s.num_keypoints
    seen = set()
    for a, b in s.flip_pairs:
        assert 0 <= a < k and 0 <= b < k and a != b
        assert a not in seen and b not in seen, "a keypoint is in two flip pairs"
        seen.update((a, b))
        na, nb = s.keypoints[a], s.keypoints[b]
        if any(w in na + nb for w in ("left", "right")):
            assert _mirror(na) == nb and _mirror(nb) == na, (na, nb)
    # every sided keypoint has its partner; no centre keypoint is swapped
    for i, n in enumerate(s.keypoints):
        if "left" in n or "right" in n:
            assert i in seen, f"{n} has no flip partner"
            assert _mirror(n) in s.keypoints


@pytest.mark.parametrize("name", ALL)
def test_flip_index_is_a_self_inverse_permutation(name):
    s = SKELETONS[name]
    index = s.flip_index()
    assert sorted(index.tolist()) == list(range(s.num_keypoints))
    np.testing.assert_array_equal(index[index], np.arange(s.num_keypoints))
    for a, b in s.flip_pairs:
        assert index[a] == b and index[b] == a


@pytest.mark.parametrize("name", ALL)
def test_edges_index_valid_keypoints(name):
    s = SKELETONS[name]
    assert len(s.edges) > 0
    assert len(s.edge_colors) == len(s.edges)
    undirected = set()
    for a, b in s.edges:
        assert 0 <= a < s.num_keypoints and 0 <= b < s.num_keypoints and a != b
        undirected.add(frozenset((a, b)))
    assert len(undirected) == len(s.edges), "duplicate edge"
    for color in s.edge_colors:
        assert len(color) == 3 and all(0 <= c <= 255 for c in color)


@pytest.mark.parametrize("name", ALL)
def test_sigmas_match_keypoints(name):
    s = SKELETONS[name]
    if s.sigmas is not None:
        assert len(s.sigmas) == s.num_keypoints
        assert all(0 < v < 0.2 for v in s.sigmas)


def test_sigmas_present_where_defined():
    for name in ("coco", "aic", "ap10k", "apt36k", "wholebody"):
        assert SKELETONS[name].sigmas is not None, name


@pytest.mark.parametrize("k, expected", [(17, "coco"), (25, "coco_25"), (14, "aic"), (16, "mpii"),
                                         (133, "wholebody")])
def test_skeleton_for_size(k, expected):
    assert skeleton_for(k).name == expected
    assert skeleton_for(k).num_keypoints == k


def test_skeleton_for_dataset_and_unknown():
    assert skeleton_for(17, "ap10k").name == "ap10k"
    assert skeleton_for(17, "apt36k").name == "apt36k"
    assert skeleton_for(17, "mpii").name == "coco"  # wrong size for the name: fall back by size
    custom = skeleton_for(21)
    assert custom.num_keypoints == 21 and custom.edges == ()
    np.testing.assert_array_equal(custom.flip_index(), np.arange(21))


def test_vitpose_plus_datasets_all_registered():
    for name in VITPOSE_PLUS_DATASETS:
        assert name in SKELETONS


def test_apt36k_is_ap10k_under_another_name():
    a, b = SKELETONS["ap10k"], SKELETONS["apt36k"]
    assert (a.keypoints, a.edges, a.flip_pairs, a.sigmas) == (b.keypoints, b.edges, b.flip_pairs, b.sigmas)


def test_coco_25_order():
    s = SKELETONS["coco_25"]
    assert s.keypoints[5] == "neck" and s.keypoints[14] == "hip"
    assert s.keypoints[19:] == ("left_big_toe", "left_small_toe", "left_heel",
                                "right_big_toe", "right_small_toe", "right_heel")
    # the COCO points keep COCO's relative order around the two inserted ones
    rest = [n for n in s.keypoints[:19] if n not in ("neck", "hip")]
    assert tuple(rest) == COCO.keypoints


def test_aic_and_mpii_order():
    aic = SKELETONS["aic"].keypoints
    assert aic[0] == "right_shoulder" and aic[3] == "left_shoulder" and aic[12:] == ("head_top", "neck")
    mpii = SKELETONS["mpii"].keypoints
    assert mpii[0] == "right_ankle" and mpii[6:10] == ("pelvis", "thorax", "upper_neck", "head_top")
    assert mpii[15] == "left_wrist"


def test_wholebody_layout():
    s = SKELETONS["wholebody"]
    assert s.keypoints[:17] == COCO.keypoints
    assert s.sigmas[:17] == COCO.sigmas
    assert s.keypoints[17:23] == SKELETONS["coco_25"].keypoints[19:]
    assert s.keypoints[23] == "face_0" and s.keypoints[90] == "face_67"
    assert s.keypoints[91] == "left_hand_root" and s.keypoints[112] == "right_hand_root"
    assert s.keypoints[132] == "right_pinky_finger4"
    # both hands have the same sigmas, point for point
    assert s.sigmas[91:112] == s.sigmas[112:133]
    assert len(s.flip_pairs) == 8 + 3 + 29 + 21


def test_wholebody_face_mirror():
    s = SKELETONS["wholebody"]
    index = s.flip_index()
    face = index[23:91] - 23
    assert ((face >= 0) & (face < 68)).all(), "face points flip only onto face points"
    fixed = {i for i in range(68) if face[i] == i}
    assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}  # chin, nose bridge, nose tip, lip middles
    for i in range(17):
        assert face[i] == 16 - i  # jaw line
    for i in range(17, 27):
        assert face[i] == 43 - i  # eyebrows
    expected = {31: 35, 32: 34, 36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46,
                48: 54, 49: 53, 50: 52, 55: 59, 56: 58, 60: 64, 61: 63, 65: 67}
    for a, b in expected.items():
        assert face[a] == b and face[b] == a
    # hands swap point for point
    np.testing.assert_array_equal(index[91:112], np.arange(112, 133))
    np.testing.assert_array_equal(index[112:133], np.arange(91, 112))
