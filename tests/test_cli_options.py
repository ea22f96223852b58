"""The command line's manners: -q/-v anywhere, no third-party noise, numbers checked at the door, every
option's help saying its default."""
import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS

from rapidpose.cli import main

COCO_MMPOSE = ASSETS / "images" / "coco-mmpose"


def rapidpose(*args, cwd):
    """`python -m rapidpose ARGS` in a process of its own: what C libraries write to stderr is caught too."""
    return subprocess.run([sys.executable, "-m", "rapidpose", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------- -q and -v

@pytest.mark.parametrize("argv, quiet, verbose", [
    (["-q", "predict", "x.jpg"], True, False),
    (["predict", "x.jpg", "-q"], True, False),
    (["predict", "--quiet", "x.jpg"], True, False),
    (["-v", "predict", "x.jpg"], False, True),
    (["predict", "x.jpg", "--verbose"], False, True),
    (["predict", "x.jpg"], False, False),
])
def test_quiet_and_verbose_work_before_and_after_the_subcommand(argv, quiet, verbose, monkeypatch):
    import rapidpose.cli.predict
    from rapidpose import progress

    seen = {}

    def fake_run(args):
        seen.update(rapidpose=logging.getLogger("rapidpose").level, root=logging.getLogger().level,
                    bars=progress.enabled())
        return 0

    monkeypatch.setattr(rapidpose.cli.predict, "run_predict", fake_run)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: bars would show unless quiet
    before = logging.getLogger("rapidpose").level, logging.getLogger().level
    assert main(argv) == 0
    assert seen["rapidpose"] == (logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    # other libraries' notes (onnxruntime's quantizer says 'Ignore MatMul ...' 24 times) only with -v
    assert seen["root"] == (logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    assert seen["bars"] is (not quiet)
    assert (logging.getLogger("rapidpose").level, logging.getLogger().level) == before  # left as it was


def test_quiet_and_verbose_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-q", "predict", "x.jpg", "-v"])
    assert exit_.value.code == 2 and "-q/--quiet and -v/--verbose cannot be used together" in capsys.readouterr().err


@pytest.fixture
def one_good_one_bad(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(COCO_MMPOSE / "000000000785.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_text("not an image")
    return folder


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_leaves_only_errors(where, tiny_checkpoint, one_good_one_bad, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the progress bar would show
    command = ["predict", str(one_good_one_bad), "--model", str(tiny_checkpoint), "--detector", "none",
               "--backend", "torch", "--json", str(tmp_path / "poses.json"),
               "--heatmaps"]  # --heatmaps without --draw: a warning
    assert main(["-q", *command] if where == "before" else [*command, "-q"]) == 1  # one image failed
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith("ERROR: ") for line in lines), err  # no bar, summary or warning
    assert "b.jpg" in err
    assert [r for r in caplog.records if r.levelno < logging.ERROR and r.name.startswith("rapidpose")] == []

    # the same run without -q: the summary, the warning and the bar
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "1 of 2 images processed, 1 people; 1 failed" in err and "WARNING: --heatmaps" in err
    assert "predict: 100%" in err  # tqdm's bar, on the "terminal"


# ---------------------------------------------------------------- third-party noise

def test_a_missing_camera_gets_our_message_not_opencvs_warnings(tmp_path):
    if Path("/dev/video57").exists():
        pytest.skip("this machine has a camera 57")
    result = rapidpose("video", "57", "--json", "x.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "ERROR: could not open camera 57" in result.stderr
    assert "[ WARN" not in result.stderr and "cap_v4l" not in result.stderr, result.stderr


def test_an_unreachable_stream_gets_our_message_not_ffmpegs(tmp_path):
    # port 9 (discard) on this machine: nothing listens, the connection is refused at once
    result = rapidpose("video", "rtsp://127.0.0.1:9/x", "--json", "x.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "ERROR: could not open stream 'rtsp://127.0.0.1:9/x'" in result.stderr
    assert "[tcp @" not in result.stderr and "Connection refused" not in result.stderr, result.stderr


# ---------------------------------------------------------------- numbers checked by argparse

PARSERS = ("predict", "eval", "bench", "export", "quantize")  # video and models: their own tests


def parser_of(command: str) -> argparse.ArgumentParser:
    from rapidpose.cli.bench import add_bench_parser
    from rapidpose.cli.eval import add_eval_parser
    from rapidpose.cli.export import add_export_parser
    from rapidpose.cli.predict import add_predict_parser
    from rapidpose.cli.quantize import add_quantize_parser

    sub = argparse.ArgumentParser(prog="rapidpose").add_subparsers()
    {"predict": add_predict_parser, "eval": add_eval_parser, "bench": add_bench_parser,
     "export": add_export_parser, "quantize": add_quantize_parser}[command](sub)
    return sub.choices[command]


NEEDED = {"predict": ["x.jpg"], "eval": ["--annotations", "a.json", "--images", "d"], "bench": [], "export": [],
          "quantize": ["--calibration", "d"]}


@pytest.mark.parametrize("command, flags, message", [
    ("predict", ["--threshold", "1.5"], "argument --threshold: must be a number from 0 to 1; got 1.5"),
    ("predict", ["--keypoint-threshold", "-0.1"], "argument --keypoint-threshold: must be a number from 0 to 1"),
    ("predict", ["--threshold", "nan"], "argument --threshold: must be a number from 0 to 1; got nan"),
    ("predict", ["--batch-size", "0"], "argument --batch-size: must be a whole number, 1 or more; got 0"),
    ("predict", ["--images-per-batch", "2.5"], "argument --images-per-batch: must be a whole number, 1 or more; "
                                               "got '2.5'"),
    ("predict", ["--dataset-index", "-1"], "argument --dataset-index: must be a whole number, 0 or more"),
    ("eval", ["--min-box-score", "2"], "argument --min-box-score: must be a number from 0 to 1"),
    ("eval", ["--batch-size", "-4"], "argument --batch-size: must be a whole number, 1 or more"),
    ("bench", ["--repeats", "0"], "argument --repeats: must be a whole number, 1 or more"),
    ("bench", ["--people", "0"], "argument --people: must be a whole number, 1 or more"),
    ("bench", ["--images", "0"], "argument --images: must be a whole number, 1 or more"),
    ("bench", ["--synthetic", "0"], "argument --synthetic: must be a whole number, 1 or more"),
    ("bench", ["--batch", "8", "0"], "argument --batch: must be a whole number, 1 or more; got 0"),
    ("bench", ["--seconds", "-1"], "argument --seconds: must be a number, 0 or more"),
    ("bench", ["--seconds", "inf"], "argument --seconds: must be a number, 0 or more; got inf"),
    ("export", ["--opset", "11"], "argument --opset: must be a whole number, 14 or more; got 11"),
    ("export", ["--dataset-index", "x"], "argument --dataset-index: must be a whole number, 0 or more; got 'x'"),
    ("quantize", ["--images", "0"], "argument --images: must be a whole number, 1 or more"),
    ("quantize", ["--timing-seconds", "-1"], "argument --timing-seconds: must be a number, 0 or more"),
])
def test_numbers_out_of_range_are_refused_with_the_range(command, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, *NEEDED[command], *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("command, flags", [
    ("predict", ["--threshold", "0", "--keypoint-threshold", "1", "--batch-size", "1", "--dataset-index", "0"]),
    ("eval", ["--min-box-score", "1", "--limit", "1"]),
    ("bench", ["--seconds", "0", "--batch", "1", "--repeats", "1"]),
    ("export", ["--opset", "14"]),
    ("quantize", ["--timing-seconds", "0", "--images", "1"]),
])
def test_the_ends_of_each_range_are_accepted(command, flags):
    parser_of(command).parse_args([*NEEDED[command], *flags])


# ---------------------------------------------------------------- help

def shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("command", PARSERS)
def test_every_option_has_help_that_shows_its_default(command):
    parser = parser_of(command)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = action.option_strings[-1]
        assert action.help, f"{command} {name} has no help"
        text = " ".join(formatter._expand_help(action).split())
        if action.default is True:  # a --no-x flag: says what happens without it
            assert "default" in text, f"{command} {name}: {text}"
        elif action.default not in (None, False, argparse.SUPPRESS):
            assert f"default {shown(action.default)}" in text, f"{command} {name}: {text}"
