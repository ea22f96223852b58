"""`rapidpose models`: every model name, what network it is, its training data, keypoints, published accuracy, source."""
from __future__ import annotations

import textwrap

from rapidpose.errors import InputError
from rapidpose.model.zoo import ALIASES, DEFAULT_MODEL, MODEL_ZOO, lookup

COLUMNS = ("name", "network", "trained on", "keypoints", "published", "source")


def add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model names and what each one is",
                       description="The model names --model takes: network, training data, keypoint set, "
                                   "the accuracy its authors published and where the file comes from. Names "
                                   "download once; any local checkpoint works too (--model path/to/file.pth).")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these names in full (old names too)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")


def _row(entry) -> tuple[str, ...]:
    name = entry.name + (" (default)" if entry.name == DEFAULT_MODEL else "")
    return (name, entry.network, entry.trained_on, f"{entry.keypoints} ({entry.num_keypoints})",
            entry.published, entry.source)


def _table(rows, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for name, *rest in rows:
            code, _, default = name.partition(" ")
            lines.append("| " + " | ".join([f"`{code}` {default}".rstrip(), *rest]) + " |")
        return "\n".join(lines)
    header = tuple(c.upper() for c in COLUMNS)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _details(name: str) -> str:
    entry, old = lookup(name)
    if entry is None:
        raise InputError(f"unknown model '{name}': `rapidpose models` lists every name")
    lines = [f"{entry.name}" + (f"  (asked as '{old}', an old name)" if old else ""),
             f"  network:    {entry.network}",
             f"  trained on: {entry.trained_on}",
             f"  keypoints:  {entry.keypoints} ({entry.num_keypoints})",
             f"  published:  {entry.published}",
             f"  source:     https://huggingface.co/{entry.repo} ({', '.join(entry.files)})"]
    if entry.note:
        lines.append(f"  note:       {entry.note}")
    olds = sorted(a for a, n in ALIASES.items() if n == entry.name)
    if olds:
        lines.append(f"  old names:  {', '.join(olds)}")
    return "\n".join(lines)


def run_models(args) -> int:
    if args.names:
        print("\n\n".join(_details(name) for name in args.names))
        return 0
    print(_table([_row(e) for e in MODEL_ZOO.values()], args.markdown))
    if not args.markdown:
        print("\npublished: the ViTPose authors' figures (COCO: val2017 AP with the AP-56 person detections, "
              "flip test); `rapidpose models NAME` tells more.")
        print(textwrap.fill("old names, still accepted with a warning: " +
                            ", ".join(f"{old} -> {new}" for old, new in ALIASES.items()), 100,
                            break_on_hyphens=False))
    return 0
