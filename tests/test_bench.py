"""`rapidpose bench` reports every stage, throughput and memory, as a table, JSON and a plot."""
import json

import cv2

from conftest import ASSETS
from rapidpose.cli import main


def test_bench_reports_stages_throughput_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "bench.json", tmp_path / "throughput.png"
    code = main(["bench", str(ASSETS / "images" / "coco-mmpose"), "--model", "random-s", "--device", "cpu",
                 "--people", "2", "--images", "2", "--repeats", "1", "--batch", "1", "2", "--draw",
                 "--json", str(out), "--plot", str(plot)])
    assert code == 0
    info = json.loads(out.read_text())
    assert info["images"] == 4 and info["people"] == 8
    stages = info["stages_ms_per_image"]
    assert set(stages) == {"read", "detect", "crop", "network", "decode", "draw"}
    assert all(stages[s] > 0 for s in ("read", "crop", "network", "decode", "draw"))
    assert stages["network"] == max(stages.values())  # the network dominates on a CPU
    assert [r["batch"] for r in info["throughput_by_batch"]] == [1, 2]
    assert all(r["crops_per_s"] > 0 for r in info["throughput_by_batch"]) and info["peak_memory_mb"] > 0
    assert cv2.imread(str(plot)).shape == (420, 720, 3)
    table = capsys.readouterr().out
    assert "| network |" in table and "people/s" in table
