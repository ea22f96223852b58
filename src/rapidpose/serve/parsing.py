"""Reading a POST /predict request: the image's bytes and name, and the boxes, each fault a RequestError
with the HTTP status it earns and a sentence saying what was wrong and what to send instead.

- 415: a Content-Type that is neither an image type, application/octet-stream (or none at all: the raw
  body), nor multipart/form-data;
- 400: no image (an empty body, a form without a file field 'image'), a form that cannot be parsed,
  boxes that are not a JSON list of [x1, y1, x2, y2] or [x1, y1, x2, y2, score] lists;
- 422: boxes that parse but cannot be used: not finite, no area, or wholly outside the image (the
  image's own faults, bytes that do not decode, are 422 too: app.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from rapidpose.errors import InputError

HOW = ("send the image as the body with its Content-Type (curl -H 'Content-Type: image/jpeg' --data-binary "
       "@photo.jpg URL) or as the file field 'image' of a multipart form (curl -F image=@photo.jpg URL)")
BOXES = "boxes are a JSON list of [x1, y1, x2, y2] or [x1, y1, x2, y2, score] lists, in image pixels"


class RequestError(InputError):
    """A request the server cannot use: `status` is its HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    """What a request carried: the image's undecoded bytes, its name in the answer, the boxes as
    parsed (None: none given)."""

    data: bytes
    name: str
    boxes: np.ndarray | None


async def read_request(request) -> Received:
    """The image and boxes of a Starlette request (raw body or multipart form; boxes from the form field
    or the query parameter 'boxes')."""
    from starlette.exceptions import HTTPException

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    boxes = request.query_params.get("boxes")
    if kind == "multipart/form-data":
        try:
            async with request.form(max_files=1, max_fields=8) as form:  # its files closed on the way out
                field = form.get("image")
                if field is None:
                    raise RequestError(400, f"the form has no field 'image': {HOW}")
                if isinstance(field, str):
                    raise RequestError(400, f"the form field 'image' is text, not a file: {HOW}")
                data, name = await field.read(), field.filename or "upload"
                text = form.get("boxes")
                boxes = text if isinstance(text, str) else boxes
        except HTTPException as exc:  # Starlette's message for a malformed form
            raise RequestError(400, f"the multipart form could not be read ({exc.detail}): {HOW}") from None
    elif kind in ("", "application/octet-stream") or kind.startswith("image/"):
        data, name = await request.body(), "upload"
    else:
        raise RequestError(415, f"Content-Type '{kind}' is not an image: {HOW}")
    if not data:
        raise RequestError(400, f"the request has no image (the {'field' if kind.startswith('multipart') else 'body'} "
                                f"is empty): {HOW}")
    return Received(data, name, None if boxes is None else parse_boxes(boxes))


def parse_boxes(text: str) -> np.ndarray:
    """'[[x1, y1, x2, y2(, score)], ...]' -> (N, 5) float32 (score 1 where not given)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise RequestError(400, f"boxes are not JSON ({text[:80]!r}): {BOXES}") from None
    if not isinstance(value, list):
        raise RequestError(400, f"boxes are a JSON {type(value).__name__}, not a list: {BOXES}")
    rows = []
    for i, box in enumerate(value):
        if (not isinstance(box, list) or len(box) not in (4, 5)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise RequestError(400, f"box {i} is {json.dumps(box)[:80]}: {BOXES}")
        rows.append([*box, 1.0] if len(box) == 4 else box)
    try:
        boxes = np.asarray(rows, np.float32).reshape(-1, 5)
    except OverflowError:  # an integer beyond any float
        raise RequestError(422, f"boxes hold a number too large to be a coordinate: {BOXES}") from None
    for i, box in enumerate(boxes):
        if not np.isfinite(box).all():
            raise RequestError(422, f"box {i} {value[i]} is not finite: {BOXES}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RequestError(422, f"box {i} {value[i]} has no area: x2 must be more than x1 and y2 more than y1")
    return boxes


def check_boxes_inside(boxes: np.ndarray | None, width: int, height: int) -> None:
    """A 422 for a box wholly outside the image (its person cannot be cropped from it)."""
    if boxes is None:
        return
    for i, (x1, y1, x2, y2, _) in enumerate(boxes.tolist()):
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise RequestError(422, f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the "
                                    f"{width}x{height} image")
