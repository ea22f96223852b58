"""The images of a photo run, in order: paths, folders and globs as on the command line, and listing files.

A listing file names one image per line. Blank lines and lines whose first non-blank character is
`#` are skipped; each other line, stripped of the blanks around it, is one image file's path, taken
as written: no glob patterns, no folders expanded (a collection of millions of photos is listed without
touching the disk; a line naming a folder or a missing file is reported when that image is read, and
the run goes on). A relative path is relative to the folder the listing file is in, so a listing can
travel with its photos; the path is shown (and written into the results) as that folder joined with
the line: `lists/day1.txt` naming `a/1.jpg` gives `lists/a/1.jpg`.
"""
from __future__ import annotations

from pathlib import Path

from rapidpose.errors import InputError


def read_list(path) -> list[Path]:
    """The image paths a listing file names, in its order (see the module's docstring for the format)."""
    path = Path(path)
    folder = path.parent
    try:
        # utf-8-sig: a byte-order mark from Windows tools is not part of the first name; names that are
        # not UTF-8 keep their bytes (surrogateescape), as Python's own os functions do
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as lines:
            found = [folder / name for name in (line.strip() for line in lines) if name and not name.startswith("#")]
    except FileNotFoundError:
        raise InputError(f"listing file '{path}' does not exist") from None
    except IsADirectoryError:
        raise InputError(f"listing file '{path}' is a folder: give --list a text file with one image path per "
                         f"line (or pass the folder itself as a PATH)") from None
    if not found:
        raise InputError(f"listing file '{path}' names no images: write one image path per line (blank lines and "
                         f"lines starting with '#' are skipped)")
    return found


def gather(paths=(), lists=()) -> list[Path]:
    """The images of a run: `paths` (files, folders searched below, globs: io.expand_paths) in their
    order, then each listing file's images in the order of `lists`. Nothing given is an InputError."""
    from rapidpose.io import expand_paths

    if not paths and not lists:
        raise InputError("no images given: pass image files, folders or globs, or a listing file with --list FILE")
    found = expand_paths(paths)
    for listing in lists:
        found.extend(read_list(listing))
    return found
