"""The rapidpose command: one module per subcommand (predict, video, eval, bench, export, quantize, models, train, serve)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from rapidpose.errors import RapidPoseError

log = logging.getLogger("rapidpose")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rapidpose", description="Fast, exact ViTPose pose estimation.")
    _add_message_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    from rapidpose.cli.bench import add_bench_parser, run_bench
    from rapidpose.cli.eval import add_eval_parser, run_eval
    from rapidpose.cli.export import add_export_parser, run_export
    from rapidpose.cli.models import add_models_parser, run_models
    from rapidpose.cli.predict import add_predict_parser, run_predict
    from rapidpose.cli.quantize import add_quantize_parser, run_quantize
    from rapidpose.cli.serve import add_serve_parser, run_serve
    from rapidpose.cli.train import add_train_parser, run_train
    from rapidpose.cli.video import add_video_parser, run_video

    add_predict_parser(sub)
    add_video_parser(sub)
    add_bench_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    add_quantize_parser(sub)
    add_models_parser(sub)
    add_train_parser(sub)
    add_serve_parser(sub)
    for command in sub.choices.values():  # -q/-v after the subcommand too: `rapidpose predict x.jpg -q`
        _add_message_options(command, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose cannot be used together")
    with messages(quiet=args.quiet, verbose=args.verbose):
        try:
            return {"predict": run_predict, "video": run_video, "bench": run_bench,
                    "export": run_export, "eval": run_eval, "quantize": run_quantize, "models": run_models,
                    "train": run_train, "serve": run_serve}[args.command](args)
        except RapidPoseError as exc:  # a whole-run problem (model, detector, boxes file): one clear line
            log.error("%s", exc)
            return 2
        except KeyboardInterrupt:
            log.error("interrupted")
            return 130


def _add_message_options(parser, default) -> None:
    """-q and -v, on the main parser (default False) and on each subcommand (default SUPPRESS, so that
    an option given before the subcommand is not reset by the subcommand's own default). A subcommand
    that defines either itself keeps its own."""
    if {"-q", "--quiet", "-v", "--verbose"} & set(parser._option_string_actions):
        return
    group = parser.add_argument_group("messages")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="errors only: no progress bars, summaries, notes or warnings on stderr (results "
                            "printed on stdout, such as bench's table, still print) (default: off)")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug messages too, and other libraries' notes (default: off)")


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is when a message comes (a redirect, a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Format(logging.Formatter):
    """rapidpose's notes as plain lines; warnings and errors say so; other libraries' messages say whose."""

    def format(self, record):
        text = super().format(record)
        if record.name != "rapidpose" and not record.name.startswith("rapidpose."):
            return f"{record.levelname}: {record.name}: {text}"
        return text if record.levelno == logging.INFO else f"{record.levelname}: {text}"


@contextlib.contextmanager
def messages(quiet: bool = False, verbose: bool = False):
    """How much the command says, for the length of the run (then logging is left as it was):
    rapidpose's own notes (summaries, stages) and warnings by default, errors only when `quiet` (and no
    progress bars: rapidpose.progress follows the 'rapidpose' logger's level), debug messages when
    `verbose`. Other libraries' messages pass from WARNING up (ERROR when quiet, INFO when verbose), so
    their notes (onnxruntime's quantizer logs 'Ignore MatMul ...' for each attention product) stay out."""
    root = logging.getLogger()
    saved = root.level, log.level
    handler = _Stderr()
    handler.setFormatter(_Format("%(message)s"))
    root.addHandler(handler)
    log.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    root.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        log.setLevel(saved[1])
