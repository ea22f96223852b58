"""The rapidpose command: one module per subcommand (predict, video, eval, bench, export, quantize, models)."""
from __future__ import annotations

import argparse
import logging

from rapidpose.errors import RapidPoseError

log = logging.getLogger("rapidpose")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rapidpose", description="Fast, exact ViTPose pose estimation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True)
    from rapidpose.cli.bench import add_bench_parser, run_bench
    from rapidpose.cli.eval import add_eval_parser, run_eval
    from rapidpose.cli.export import add_export_parser, run_export
    from rapidpose.cli.predict import add_predict_parser, run_predict
    from rapidpose.cli.quantize import add_quantize_parser, run_quantize
    from rapidpose.cli.video import add_video_parser, run_video

    add_predict_parser(sub)
    add_video_parser(sub)
    add_bench_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    add_quantize_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return {"predict": run_predict, "video": run_video, "bench": run_bench,
                "export": run_export, "eval": run_eval, "quantize": run_quantize}[args.command](args)
    except RapidPoseError as exc:  # a whole-run problem (model, detector, boxes file): one clear line
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
