"""`rapidpose predict` end to end on the shared assets, and on every kind of bad input."""
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import ASSETS, RTMDET

from rapidpose.cli import main
from rapidpose.errors import InputError

COCO_MINI = ASSETS / "images" / "coco-mini"
COCO_MMPOSE = ASSETS / "images" / "coco-mmpose"


def test_predict_on_coco_mini_writes_json_coco_and_drawings(tiny_checkpoint, tmp_path):
    out_json, out_coco, draw_dir = tmp_path / "poses.json", tmp_path / "coco.json", tmp_path / "drawn"
    code = main(["predict", str(COCO_MINI / "images"), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                 "--json", str(out_json), "--coco", str(out_coco), "--draw", str(draw_dir), "--flip"])
    assert code == 0
    images = sorted((COCO_MINI / "images").glob("*.jpg"))
    doc = json.loads(out_json.read_text())
    assert len(doc["keypoint_names"]) == 17 and doc["keypoint_names"][0] == "nose"
    assert [15, 13] in doc["skeleton"] and doc["name"] == "coco"
    assert [e["image"] for e in doc["images"]] == [str(p) for p in images]
    people = 0
    for entry, path in zip(doc["images"], images):
        h, w = cv2.imread(str(path)).shape[:2]
        assert (entry["width"], entry["height"]) == (w, h) and "error" not in entry
        for person in entry["people"]:
            x1, y1, x2, y2 = person["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and person["box_score"] >= 0.3
            assert len(person["keypoints"]) == 17 and all(len(k) == 3 for k in person["keypoints"])
        people += len(entry["people"])
    # the detector finds about as many people as are annotated (59 in the 60 images)
    annotated = len(json.loads((COCO_MINI / "person_keypoints.json").read_text())["annotations"])
    assert 0.7 * annotated <= people <= 3 * annotated
    coco = json.loads(out_coco.read_text())
    assert len(coco) == people and {r["image_id"] for r in coco} <= {int(p.stem) for p in images}
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in coco)
    drawn = sorted(draw_dir.glob("*.jpg"))
    assert [p.stem for p in drawn] == [p.stem for p in images]
    assert cv2.imread(str(drawn[0])).shape == cv2.imread(str(images[0])).shape


def test_given_boxes_from_coco_annotations(tiny_checkpoint, tmp_path):
    out = tmp_path / "poses.json"
    code = main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint),
                 "--boxes", str(COCO_MMPOSE / "test_coco.json"), "--json", str(out), "--draw", str(tmp_path / "d"),
                 "--heatmaps"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert sum(len(e["people"]) for e in doc["images"]) == 14  # every annotated person, no detector
    first = next(e for e in doc["images"] if e["image"].endswith("000000000785.jpg"))
    assert first["people"][0]["box"] == pytest.approx([280.79, 44.73, 280.79 + 218.7, 44.73 + 346.68], abs=0.01)
    assert len(list((tmp_path / "d").glob("*_heatmaps.jpg"))) == 4

    # our own JSON output feeds --boxes back in, and COCO detections with scores work too
    again = tmp_path / "again.json"
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint), "--boxes", str(out),
                 "--json", str(again)]) == 0
    assert [len(e["people"]) for e in json.loads(again.read_text())["images"]] == \
        [len(e["people"]) for e in doc["images"]]
    dets = tmp_path / "dets.json"
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint),
                 "--boxes", str(COCO_MMPOSE / "test_coco_det_AP_H_56.json"), "--threshold", "0.5",
                 "--json", str(dets)]) == 0
    scores = [p["box_score"] for e in json.loads(dets.read_text())["images"] for p in e["people"]]
    assert scores and min(scores) >= 0.5


def test_bad_inputs_are_reported_and_the_rest_is_written(tiny_checkpoint, tmp_path, caplog):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = COCO_MMPOSE / "000000000785.jpg"
    shutil.copy(good, folder / "a_good.jpg")
    data = good.read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "c_not_an_image.jpg").write_text("hello")
    (folder / "d_empty.png").write_bytes(b"")
    image = cv2.imread(str(good))
    cv2.imwrite(str(folder / "e_gray.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "f_rgba.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "g_16bit.png"), image.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "h_tiny.png"), np.zeros((1, 1, 3), np.uint8))
    (folder / "notes.txt").write_text("not picked up from a folder")
    out = tmp_path / "poses.json"
    code = main(["predict", str(folder), str(tmp_path / "missing.jpg"), "--model", str(tiny_checkpoint),
                 "--detector", "none", "--json", str(out), "--draw", str(tmp_path / "drawn")])
    assert code == 1  # some inputs failed
    entries = {e["image"].split("/")[-1]: e for e in json.loads(out.read_text())["images"]}
    assert len(entries) == 9 and "notes.txt" not in entries
    for name in ("b_truncated.jpg", "c_not_an_image.jpg", "d_empty.png", "missing.jpg"):
        assert entries[name]["people"] == [] and name in entries[name]["error"]
        assert name in caplog.text
    assert "truncated JPEG" in entries["b_truncated.jpg"]["error"]
    for name in ("a_good.jpg", "e_gray.png", "f_rgba.png", "g_16bit.png", "h_tiny.png"):
        assert len(entries[name]["people"]) == 1 and (entries[name]["width"], entries[name]["height"]) != (0, 0)
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == 5


def test_wrong_model_or_detector_fails_with_one_clear_line(tmp_path, caplog):
    (tmp_path / "model.pth").write_bytes(b"\x00garbage")
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tmp_path / "model.pth")]) == 2
    assert "model.pth" in caplog.text and "Traceback" not in caplog.text
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tmp_path / "absent.pth")]) == 2
    assert "does not exist" in caplog.text
    (tmp_path / "boxes.json").write_text("{not json")
    assert main(["predict", str(COCO_MMPOSE), "--boxes", str(tmp_path / "boxes.json")]) == 2
    assert "boxes.json" in caplog.text


def test_offline_hub_names_say_how_to_pass_a_file(tmp_path, caplog, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert main(["predict", str(COCO_MMPOSE), "--model", "vitpose-b"]) == 2
    assert "--model /path/to/file" in caplog.text


def test_folders_are_searched_below_and_an_empty_one_is_an_error(tiny_checkpoint, tmp_path, caplog):
    from rapidpose.io import expand_paths

    assert expand_paths([COCO_MINI]) == sorted((COCO_MINI / "images").glob("*.jpg"))  # the images/ below
    assert expand_paths([str(COCO_MINI / "*" / "*.jpg")]) == expand_paths([COCO_MINI])  # a glob
    with pytest.raises(InputError, match="no image matches"):
        expand_paths([str(tmp_path / "*.png")])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", str(tmp_path / "empty"), "--model", str(tiny_checkpoint)]) == 2
    assert "holds no images" in caplog.text and "download" not in caplog.text  # fails before loading


def _detections(path, image_ids):
    path.write_text(json.dumps([{"image_id": i, "category_id": 1, "bbox": [280.79, 44.73, 218.7, 346.68],
                                 "score": 0.9} for i in image_ids]))
    return path


def test_boxes_that_match_no_image_stop_the_run_and_say_how_entries_are_matched(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(COCO_MMPOSE / "000000000785.jpg", folder / "000000000785.jpg")
    shutil.copy(COCO_MMPOSE / "000000040083.jpg", folder / "street.jpg")
    boxes = _detections(tmp_path / "dets.json", [11, 12, 13, 14])
    # the model does not exist: the boxes are checked first, before anything loads
    assert main(["predict", str(folder), "--model", str(tmp_path / "absent.pth"), "--boxes", str(boxes)]) == 2
    assert "does not exist" not in caplog.text
    message = caplog.text
    assert "no entry of boxes file" in message and "dets.json" in message and "4 entries" in message
    assert "'11', '12', '13' and 1 more" in message and "'000000000785.jpg'" in message
    assert "000000000785.jpg is image id 785" in message and "position among the inputs" in message

    caplog.clear()
    (tmp_path / "empty.json").write_text("[]")
    assert main(["predict", str(folder), "--model", str(tmp_path / "absent.pth"),
                 "--boxes", str(tmp_path / "empty.json")]) == 2
    assert "empty.json' lists no images" in caplog.text


def test_boxes_that_match_some_images_warn_about_the_rest(tiny_checkpoint, tmp_path, caplog, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(COCO_MMPOSE / "000000000785.jpg", folder / "000000000785.jpg")
    shutil.copy(COCO_MMPOSE / "000000040083.jpg", folder / "000000040083.jpg")
    shutil.copy(COCO_MMPOSE / "000000196141.jpg", folder / "street.jpg")  # 3rd input: position id 2
    boxes = _detections(tmp_path / "dets.json", [785, 785, 11, 12, 13, 14])
    out = tmp_path / "poses.json"
    code = main(["predict", str(folder), "--model", str(tiny_checkpoint), "--boxes", str(boxes),
                 "--backend", "torch", "--json", str(out)])
    assert code == 0
    people = {e["image"].split("/")[-1]: len(e["people"]) for e in json.loads(out.read_text())["images"]}
    assert people == {"000000000785.jpg": 2, "000000040083.jpg": 0, "street.jpg": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    entries = next(w for w in warnings if "entries of boxes file" in w)
    assert "4 of the 5 entries" in entries and "'11', '12', '13' and 1 more" in entries and "'785'" not in entries
    assert "000000000785.jpg is image id 785" in entries
    images = next(w for w in warnings if "input images have no entry" in w)
    assert "2 of the 3 input images" in images and "000000040083.jpg" in images and "street.jpg" in images
    assert "000000000785.jpg" not in images
    assert "3 of 3 images processed, 2 people" in capsys.readouterr().err

    # every image matched (COCO annotations list each image): no warning at all
    caplog.clear()
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint), "--backend", "torch",
                 "--boxes", str(COCO_MMPOSE / "test_coco.json")]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_model_file_without_metadata_needs_its_keypoint_set(tiny_checkpoint, tmp_path, caplog):
    import onnx

    from rapidpose.deploy.export import export_onnx
    from rapidpose.model.weights import load_model

    path = export_onnx(load_model(tiny_checkpoint, "cpu"), tmp_path / "tiny.onnx", check=False)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]  # as a file from another tool
    onnx.save(proto, str(path))
    image = str(COCO_MMPOSE / "000000000785.jpg")
    assert main(["predict", image, "--model", str(path), "--detector", "none"]) == 2
    assert "no rapidpose metadata" in caplog.text and "--keypoint-set coco" in caplog.text
    out = tmp_path / "poses.json"
    assert main(["predict", image, "--model", str(path), "--detector", "none", "--keypoint-set", "ap10k",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["name"] == "ap10k" and doc["keypoint_names"][0] == "left_eye"
    caplog.clear()
    # a checkpoint knows its keypoint set: naming another one is an error, not ignored
    assert main(["predict", image, "--model", str(tiny_checkpoint), "--detector", "none",
                 "--keypoint-set", "ap10k"]) == 2
    assert "keypoint_set 'ap10k' is for exported .onnx/.xml files" in caplog.text and "'coco'" in caplog.text


def test_compile_with_an_exported_model_stops_the_run(tmp_path, caplog):
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tmp_path / "model.xml"), "--compile"]) == 2
    assert "torch.compile" in caplog.text and "model.xml" in caplog.text and "leave --compile out" in caplog.text


def test_without_an_output_option_a_table_of_people_per_image_is_printed(tiny_checkpoint, tmp_path, capsys, caplog):
    assert main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint), "--detector", "none",
                 "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    images = sorted(COCO_MMPOSE.glob("*.jpg"))
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["image", "size", "people"] and len(rows) == 1 + len(images)
    for row, path in zip(rows[1:], images):
        h, w = cv2.imread(str(path)).shape[:2]
        assert row == [str(path), f"{w}x{h}", "1"]  # --detector none: the whole image is one person
    assert "no --json, --jsonl, --coco or --draw given" in caplog.text and "not written anywhere" in caplog.text

    # an output asked for: no table, no hint
    for option, name in (("--coco", "coco.json"), ("--jsonl", "poses.jsonl")):
        caplog.clear()
        assert main(["predict", str(COCO_MMPOSE), "--model", str(tiny_checkpoint), "--detector", "none",
                     "--backend", "torch", option, str(tmp_path / name)]) == 0
        assert capsys.readouterr().out == "" and "no --json" not in caplog.text


def test_no_images_named_at_all_is_an_error_before_anything_loads(tmp_path, caplog):
    assert main(["predict", "--model", str(tmp_path / "absent.pth")]) == 2
    assert "no images given" in caplog.text and "--list FILE" in caplog.text and "does not exist" not in caplog.text
