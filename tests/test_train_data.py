"""Training data: COCO-format keypoint files of any keypoint set -> samples, with the official box cleaning
and every unusable annotation skipped and counted."""
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS

from rapidpose import skeletons
from rapidpose.errors import InputError
from rapidpose.train.data import KeypointSet, Sample, load_keypoint_set, skeleton_from_category, upper_body_ids

COCO_MINI = ASSETS / "images" / "coco-mini"
MMPOSE = ASSETS / "images" / "coco-mmpose"
PHOTO = "000000000785.jpg"  # 640 x 425
PHOTO_2 = "000000040083.jpg"  # 500 x 333

ANIMAL = {"id": 7, "name": "dog", "keypoints": ["nose", "left_paw", "right_paw", "tail_base", "tail_tip"],
          "skeleton": [[1, 2], [1, 3], [1, 4], [4, 5]], "sigmas": [0.03, 0.04, 0.04, 0.05, 0.06]}


def person(image_id, ann_id, bbox, points, **extra):
    """An annotation with the given labelled points (x, y) (v = 2), the rest unlabelled."""
    flat = [0.0] * (3 * extra.pop("count", 5))
    for i, (x, y) in points.items():
        flat[3 * i: 3 * i + 3] = [x, y, 2]
    return {"id": ann_id, "image_id": image_id, "category_id": 7, "bbox": bbox, "keypoints": flat,
            "num_keypoints": len(points), "area": 1000.0, "iscrowd": 0, **extra}


def write_set(tmp_path, annotations, images=None, categories=None, files=(PHOTO, PHOTO_2)):
    """An annotation file in tmp_path and an image folder holding (links to) real photos."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in files:
        if not (folder / name).exists():
            (folder / name).symlink_to(MMPOSE / name)
    if images is None:
        images = [{"id": 1, "file_name": PHOTO, "width": 640, "height": 425},
                  {"id": 2, "file_name": PHOTO_2, "width": 500, "height": 333}]
    doc = {"images": images, "annotations": annotations, "categories": categories or [ANIMAL]}
    path = tmp_path / "keypoints.json"
    path.write_text(json.dumps(doc))
    return path, folder


# --- COCO itself ---------------------------------------------------------------------------------------

def test_coco_mini_loads_with_cocos_keypoint_set_and_the_official_selection():
    path = COCO_MINI / "person_keypoints.json"
    doc = json.loads(path.read_text())
    data = load_keypoint_set(path, COCO_MINI / "images")

    assert data.skeleton is skeletons.COCO
    # by hand from the file: people with labelled keypoints are kept (none is a crowd), the rest skipped
    labelled = [a for a in doc["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    assert len(labelled) == 29 and len(doc["annotations"]) == 59
    assert [s.image_id for s in data.samples] == [a["image_id"] for a in labelled]
    assert data.skipped == {"no labelled keypoints": 30}
    assert len(data.images) == 60 and data.images[397133]["file_name"] == "000000397133.jpg"
    assert data.summary() == "29 people in 22 images, 17 keypoints (coco), skipped: 30 no labelled keypoints"
    assert data.upper_body == list(range(11))
    assert data.annotations == path and data.image_dir == COCO_MINI / "images"

    first = data.samples[0]
    want = np.asarray(labelled[0]["keypoints"], np.float32).reshape(17, 3)
    assert first.image == COCO_MINI / "images" / "000000397133.jpg" and first.image.is_file()
    np.testing.assert_array_equal(first.keypoints, want[:, :2])
    np.testing.assert_array_equal(first.visible, want[:, 2])
    assert first.keypoints.dtype == first.visible.dtype == first.box.dtype == np.float32
    assert first.area == pytest.approx(17376.91885)


@pytest.mark.parametrize("ann_id, box", [
    (200887, [388.66, 69.92, 388.66 + 109.41 - 1, 69.92 + 277.62 - 1]),  # inside: x + w - 1, y + h - 1
    (554513, [464.46, 0, 639, 422]),  # 640 x 423 image: right and bottom edge clipped to w - 1, h - 1
    (2161544, [7.52, 300.94, 357, 300.94 + 336.7 - 1]),  # 358 x 640 image: right edge clipped
])
def test_boxes_are_cleaned_as_the_official_code_on_coco_mini(ann_id, box):
    doc = json.loads((COCO_MINI / "person_keypoints.json").read_text())
    index = [a["id"] for a in doc["annotations"] if a["num_keypoints"] > 0].index(ann_id)
    data = load_keypoint_set(COCO_MINI / "person_keypoints.json", COCO_MINI / "images")
    np.testing.assert_allclose(data.samples[index].box, box, atol=1e-4)


@pytest.mark.parametrize("bbox, box", [
    ([100, 50, 200, 100], [100, 50, 299, 149]),
    ([-10, -5, 50, 40], [0, 0, 49, 39]),  # x1 moves to 0 first, then x2 = x1 + w - 1 (the official order)
    ([600, 400, 100, 100], [600, 400, 639, 424]),  # past the right and bottom edges of 640 x 425
    ([10.5, 20.25, 3, 2], [10.5, 20.25, 12.5, 21.25]),
])
def test_boxes_match_hand_computed_official_cleaning(tmp_path, bbox, box):
    path, folder = write_set(tmp_path, [person(1, 1, bbox, {0: (120, 60)})])
    (sample,) = load_keypoint_set(path, folder).samples
    np.testing.assert_allclose(sample.box, box, atol=1e-5)


# --- keypoint sets from the file ---------------------------------------------------------------------------

def test_a_custom_category_gives_its_names_edges_flip_pairs_and_sigmas(tmp_path):
    path, folder = write_set(tmp_path, [person(1, 1, [100, 50, 200, 100], {0: (150, 70), 1: (120, 120)}),
                                        person(2, 2, [10, 10, 100, 200], {2: (50, 60)})])
    data = load_keypoint_set(path, folder)
    s = data.skeleton
    assert s.name == "dog"
    assert s.keypoints == ("nose", "left_paw", "right_paw", "tail_base", "tail_tip")
    assert s.edges == ((0, 1), (0, 2), (0, 3), (3, 4))
    assert s.flip_pairs == ((1, 2),)
    assert s.flip_index().tolist() == [0, 2, 1, 3, 4]
    assert s.sigmas == (0.03, 0.04, 0.04, 0.05, 0.06)
    assert data.upper_body == [0]  # the nose: paws and tail are not named like an upper body
    assert isinstance(data, KeypointSet) and all(isinstance(p, Sample) for p in data.samples)
    assert [p.image for p in data.samples] == [folder / PHOTO, folder / PHOTO_2]
    np.testing.assert_array_equal(data.samples[0].keypoints[:2], [[150, 70], [120, 120]])
    np.testing.assert_array_equal(data.samples[0].visible, [2, 2, 0, 0, 0])
    assert data.summary() == "2 people in 2 images, 5 keypoints (dog), skipped: none"


def test_edges_counted_from_zero_are_taken_as_they_are_and_nonsense_is_left_out(caplog):
    zero = skeleton_from_category({**ANIMAL, "skeleton": [[0, 1], [3, 4]]})
    assert zero.edges == ((0, 1), (3, 4))
    ambiguous = skeleton_from_category({**ANIMAL, "skeleton": [[1, 2], [4, 5]]})
    assert ambiguous.edges == ((0, 1), (3, 4))  # no 0 among them: COCO's 1-based numbering
    with caplog.at_level(logging.WARNING, "rapidpose"):
        assert skeleton_from_category({**ANIMAL, "skeleton": [[0, 5]]}).edges == ()  # fits neither numbering
        assert skeleton_from_category({**ANIMAL, "skeleton": [[1, 2, 3]]}).edges == ()
        assert skeleton_from_category({**ANIMAL, "skeleton": "1-2"}).edges == ()
    assert caplog.text.count("left out") == 3
    assert skeleton_from_category({k: v for k, v in ANIMAL.items() if k != "skeleton"}).edges == ()


@pytest.mark.parametrize("left, right", [
    ("left_eye", "right_eye"), ("l_eye", "r_eye"), ("eye_left", "eye_right"), ("leftEye", "rightEye"),
    ("LEFT_EYE", "Right_Eye"), ("Left Eye", "Right Eye"), ("eye_l", "eye_r"), ("L_F_Paw", "R_F_Paw"),
    ("medial_left_knee", "medial_right_knee"), ("lEye", "rEye"), ("left-eye", "right-eye"),
])
def test_flip_pairs_are_found_in_every_common_spelling(left, right):
    category = {"name": "thing", "keypoints": ["center", right, "tail", left]}
    assert skeleton_from_category(category).flip_pairs == ((1, 3),)


def test_names_that_only_look_sided_do_not_pair():
    names = ["left_hand", "right_foot", "rear_paw", "front_paw", "ring", "lateral", "hip_l2", "hip_r2"]
    assert skeleton_from_category({"name": "thing", "keypoints": names}).flip_pairs == ()


@pytest.mark.parametrize("known", [s for s in skeletons.SKELETONS.values()], ids=lambda s: s.name)
def test_flip_pairs_from_the_names_of_every_known_set_are_its_own(known):
    """Each known set's names plus one more point (so it is not that set): the same pairs, except
    the WholeBody face, which is mirrored by position, not by name."""
    found = skeleton_from_category({"name": "x", "keypoints": [*known.keypoints, "extra"]}).flip_pairs
    want = {tuple(sorted(p)) for p in known.flip_pairs if not known.keypoints[p[0]].startswith("face")}
    assert set(found) == want and len(found) == len(want)


def test_a_known_set_comes_back_as_itself_in_any_spelling():
    aic_file = json.loads((ASSETS / "images" / "aic" / "test_aic.json").read_text())["categories"][0]
    assert aic_file["keypoints"][0] == "Right Shoulder"
    assert skeleton_from_category(aic_file) is skeletons.AIC
    coco = {"name": "person", "keypoints": list(skeletons.COCO.keypoints)}
    assert skeleton_from_category(coco) is skeletons.COCO
    assert skeleton_from_category({**coco, "sigmas": list(skeletons.COCO.sigmas)}) is skeletons.COCO
    assert skeleton_from_category({**coco, "keypoints": [n.upper() for n in skeletons.COCO.keypoints]}) \
        is skeletons.COCO
    own = skeleton_from_category({**coco, "sigmas": [0.1] * 17})
    assert own.name == "coco" and own.sigmas == (0.1,) * 17 and own.flip_pairs == skeletons.COCO.flip_pairs
    animals = {"name": "animal", "keypoints": list(skeletons.AP10K.keypoints)}
    assert skeleton_from_category(animals) is skeletons.AP10K
    assert skeleton_from_category(animals, name="apt36k") is skeletons.APT36K
    assert skeleton_from_category({"name": "x", "keypoints": list(skeletons.MPII.keypoints)}) is skeletons.MPII

    data = load_keypoint_set(ASSETS / "images" / "aic" / "test_aic.json", ASSETS / "images" / "aic")
    assert data.skeleton is skeletons.AIC and len(data.samples) == 9 and data.skipped == {}
    assert data.upper_body == [0, 1, 2, 3, 4, 5, 12, 13]


def test_without_sigmas_a_new_set_gets_a_uniform_one_and_says_so(caplog):
    category = {k: v for k, v in ANIMAL.items() if k != "sigmas"}
    with caplog.at_level(logging.INFO, "rapidpose"):
        s = skeleton_from_category(category, name="pets")
    assert s.name == "pets" and s.sigmas == (0.05,) * 5
    assert "0.05" in caplog.text and "dog" in caplog.text


@pytest.mark.parametrize("bad", [{"sigmas": [0.1, 0.2]}, {"sigmas": [0.1, 0.1, 0.1, 0.1, -1]},
                                 {"sigmas": "0.1"}, {"keypoints": []}, {"keypoints": ["a", "A"]},
                                 {"keypoints": ["a", 3]}])
def test_unusable_keypoint_names_or_sigmas_are_input_errors(bad):
    with pytest.raises(InputError, match="dog"):
        skeleton_from_category({**ANIMAL, **bad})


def test_upper_body_is_the_official_split_for_known_sets_and_found_by_name_for_others():
    assert upper_body_ids(skeletons.COCO) == list(range(11))
    assert upper_body_ids(skeletons.WHOLEBODY) == list(range(11))  # face and hands are not 'upper' there
    assert upper_body_ids(skeletons.MPII) == [7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert upper_body_ids(skeletons.AP10K) == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # the official right front paw is lower
    # the name rule agrees with the official split of the human sets
    for known in (skeletons.COCO, skeletons.AIC, skeletons.MPII):
        custom = skeleton_from_category({"name": "x", "keypoints": [*known.keypoints, "extra"]})
        assert upper_body_ids(custom) == upper_body_ids(known)
    assert upper_body_ids(skeletons.COCO_25) == list(range(12))  # no official split: by name, the neck too
    custom = skeleton_from_category({"name": "x", "keypoints": ["rear_paw", "left_thumb1", "HeadTop", "hip"]})
    assert upper_body_ids(custom) == [1, 2]
    assert upper_body_ids(skeleton_from_category({"name": "x", "keypoints": ["a", "b", "tail"]})) is None


# --- skipped, never a crash ------------------------------------------------------------------------------

def test_every_unusable_annotation_is_skipped_and_counted_while_good_ones_survive(tmp_path, monkeypatch):
    good = {0: (150, 70), 1: (120, 120)}
    kp = person(1, 0, [0, 0, 1, 1], good)["keypoints"]
    annotations = [
        person(1, 1, [100, 50, 200, 100], good),
        person(1, 2, [100, 50, 200, 100], good, count=17),  # COCO's 17 for a 5-point category
        {**person(1, 3, [100, 50, 200, 100], good), "keypoints": kp[:-1]},
        {**person(1, 4, [100, 50, 200, 100], good), "keypoints": [float("nan"), *kp[1:]]},
        {**person(1, 5, [100, 50, 200, 100], good), "keypoints": [None, *kp[1:]]},
        {**person(1, 6, [100, 50, float("inf"), 100], good)},
        person(1, 7, [100, 50, 200, 100], {}),  # nothing labelled
        {**person(1, 8, [100, 50, 200, 100], good), "num_keypoints": 0},  # the official test
        person(1, 9, [100, 50, 200, 100], good, iscrowd=1),
        person(1, 10, [700, 50, 20, 20], good),  # right of the 640-wide image
        person(1, 11, [10, 10, 1, 30], good),  # one pixel wide: x2 == x1
        {**person(1, 12, [100, 50, 200, 100], good), "area": 0},
        person(99, 13, [100, 50, 200, 100], good),  # no such image entry
        person(3, 14, [100, 50, 200, 100], good),  # image file not on disk
        person(3, 15, [100, 50, 200, 100], good),
        {**person(2, 16, [100, 50, 200, 100], good), "category_id": 1},
        {k: v for k, v in person(2, 17, [100, 50, 200, 100], good).items() if k != "bbox"},
        "not an annotation",
        {**person(2, 18, [10, 10, 100, 200], good), "num_keypoints": 7},  # a wrong count does not matter
        {k: v for k, v in person(2, 19, [10, 10, 100, 200], good).items() if k != "category_id"},
    ]
    images = [{"id": 1, "file_name": PHOTO, "width": 640, "height": 425},
              {"id": 2, "file_name": PHOTO_2, "width": 500, "height": 333},
              {"id": 3, "file_name": "gone.jpg", "width": 640, "height": 480}]
    path, folder = write_set(tmp_path, annotations, images)

    looked = []
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: looked.append(self.name) or is_file(self))
    data = load_keypoint_set(path, folder)

    assert data.skipped == {
        "keypoint count differs from the category": 2, "non-finite numbers": 3, "no labelled keypoints": 2,
        "crowd": 1, "box empty after clipping": 2, "zero area": 1, "image entry missing": 1,
        "image file missing": 2, "other category": 1, "no box": 1, "not an annotation": 1}
    kept = [a for a in annotations if isinstance(a, dict) and a["id"] in (1, 18, 19)]
    assert [s.image_id for s in data.samples] == [a["image_id"] for a in kept]
    for sample, ann in zip(data.samples, kept):
        np.testing.assert_array_equal(sample.keypoints, np.reshape(ann["keypoints"], (5, 3))[:, :2])
    assert looked.count("gone.jpg") == 1  # each image's file is looked for once
    assert data.summary().startswith("3 people in 2 images, 5 keypoints (dog), skipped: 3 non-finite numbers")


def test_min_keypoints_keeps_unlabelled_people_or_asks_for_more(tmp_path):
    path, folder = write_set(tmp_path, [person(1, 1, [100, 50, 200, 100], {}),
                                        person(1, 2, [100, 50, 200, 100], {0: (150, 70)}),
                                        person(2, 3, [10, 10, 100, 200], {0: (50, 60), 3: (40, 90), 4: (30, 80)})])
    assert len(load_keypoint_set(path, folder, min_keypoints=0).samples) == 3
    assert load_keypoint_set(path, folder).skipped == {"no labelled keypoints": 1}
    assert load_keypoint_set(path, folder, min_keypoints=3).skipped == {
        "no labelled keypoints": 1, "fewer than 3 labelled keypoints": 1}
    with pytest.raises(InputError, match="min_keypoints"):
        load_keypoint_set(path, folder, min_keypoints=-1)


@pytest.mark.parametrize("pillow", [True, False], ids=["header", "decoded"])
def test_an_image_entry_without_a_size_is_measured_from_its_file(tmp_path, monkeypatch, pillow):
    from PIL import Image

    from rapidpose.io import read_image

    images = [{"id": 1, "file_name": PHOTO}, {"id": 2, "file_name": "broken.jpg"}, {"id": 3, "file_name": "turned.jpg"}]
    path, folder = write_set(tmp_path, [person(1, 1, [600, 400, 100, 100], {0: (620, 410)}),
                                        person(2, 2, [10, 10, 50, 50], {0: (20, 20)}),
                                        person(3, 3, [0, 0, 100, 100], {0: (20, 20)})], images)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 x 40, shown (and read by rapidpose) turned: 40 wide, 60 high
    Image.new("RGB", (60, 40)).save(folder / "turned.jpg", exif=exif)
    assert read_image(folder / "turned.jpg").shape[:2] == (60, 40)
    if not pillow:
        monkeypatch.setitem(sys.modules, "PIL", None)  # no Pillow: OpenCV decodes the image instead

    data = load_keypoint_set(path, folder)
    np.testing.assert_allclose(data.samples[0].box, [600, 400, 639, 424])  # the photo is 640 x 425
    assert (data.images[1]["width"], data.images[1]["height"]) == (640, 425)
    np.testing.assert_allclose(data.samples[1].box, [0, 0, 39, 59])
    assert (data.images[3]["width"], data.images[3]["height"]) == (40, 60)
    assert data.skipped == {"image unreadable": 1}


# --- errors a user can cause --------------------------------------------------------------------------------

def test_several_keypoint_categories_need_a_category_id(tmp_path):
    cat = {"id": 8, "name": "cat", "keypoints": ["nose", "tail"]}
    car = {"id": 3, "name": "car"}
    anns = [person(1, 1, [100, 50, 200, 100], {0: (150, 70)}),
            {**person(2, 2, [10, 10, 100, 200], {0: (50, 60)}, count=2), "category_id": 8}]
    path, folder = write_set(tmp_path, anns, categories=[ANIMAL, car, cat])
    with pytest.raises(InputError, match="category_id") as error:
        load_keypoint_set(path, folder)
    assert str(path) in str(error.value) and "'dog' (5 keypoints)" in str(error.value) and "'cat'" in str(error.value)

    dogs = load_keypoint_set(path, folder, category_id=7)
    assert dogs.skeleton.name == "dog" and len(dogs.samples) == 1 and dogs.skipped == {"other category": 1}
    cats = load_keypoint_set(path, folder, category_id=8)
    assert cats.skeleton.keypoints == ("nose", "tail") and [s.image_id for s in cats.samples] == [2]
    for wrong in (3, 5):
        with pytest.raises(InputError, match=str(path)):
            load_keypoint_set(path, folder, category_id=wrong)


def _user_error_cases(tmp_path):
    path, folder = write_set(tmp_path, [person(1, 1, [100, 50, 200, 100], {0: (150, 70)})])
    bad = tmp_path / "bad.json"
    yield "missing file", tmp_path / "nope.json", folder, "does not exist"
    yield "a folder", folder, folder, "does not exist"
    bad.write_text("{not json")
    yield "not JSON", bad, folder, "not valid JSON"
    bad.write_text("[1, 2]")
    yield "a list", bad, folder, "not a COCO annotation file"
    bad.write_text(json.dumps({"images": [], "categories": [ANIMAL]}))
    yield "no annotations", bad, folder, "'annotations'"
    yield "image folder missing", path, tmp_path / "nowhere", "nowhere"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    yield "no keypoint category", bad, folder, "no category with keypoint names"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{**ANIMAL, "sigmas": [1]}]}))
    yield "bad sigmas", bad, folder, "sigmas"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [ANIMAL]}))
    yield "no annotation at all", bad, folder, "no usable annotation.*the file lists none"
    write_set(tmp_path, [person(1, 1, [100, 50, 200, 100], {}), person(1, 2, [5, 5, 1, 1], {0: (5, 5)})])
    yield "none usable", path, folder, "1 no labelled keypoints, 1 box empty after clipping"
    yield "wrong folder", path, MMPOSE.parent, "1 image file missing.*pass the folder"


def test_every_error_a_user_can_cause_is_an_input_error_naming_the_file(tmp_path):
    seen = []
    for what, path, folder, message in _user_error_cases(tmp_path):  # each case is tried as it is yielded
        with pytest.raises(InputError, match=message) as error:
            load_keypoint_set(path, folder)
        named = str(folder) if what == "image folder missing" else str(path)
        assert named in str(error.value), what
        seen.append(what)
    assert len(seen) == 11


def test_the_halpe_asset_with_an_empty_keypoint_list_is_refused_clearly():
    halpe = ASSETS / "images" / "halpe" / "test_halpe.json"
    with pytest.raises(InputError, match="no category with keypoint names") as error:
        load_keypoint_set(halpe, ASSETS / "images" / "halpe")
    assert str(halpe) in str(error.value)
