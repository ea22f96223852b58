"""Poses drawn into a batch of I420 frames where the frames already are: on the GPU, one Triton kernel
per plane for the whole batch.

At hundreds of 1080p frames/s, drawing on the host (a few dozen cv2 calls a frame, 6 ms of a slow
core) needs several cores and stalls on Python's GIL; on the GPU it is a few kernels a batch, and the
host is left to encode. What is drawn is what draw.plan decides for draw_poses_i420 (the same layers,
colours, widths and labels): limbs, rims and joints as anti-aliased capsules (a round-capped segment;
a disc when both ends meet), box sides likewise, labels as a filled tag and the text's cover, which
cv2 renders once per text (cached). Luma at full resolution, chroma at half, with the same quarter-
pixel offset as the cv2 drawing. The pictures match cv2's to within its anti-aliasing (tests).

On a CPU tensor (or without Triton) the frames are drawn by cv2 through numpy views, in place.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from rapidpose.draw.cpu import _ONE, _yuv, draw_poses_i420, half_cover, plan
from rapidpose.errors import InputError
from rapidpose.results import Poses

# one row per shape, in drawing order; columns:
_KIND, _X0, _Y0, _X1, _Y1, _RADIUS, _VALUE, _OFFSET, _WIDTH = 0, 1, 2, 3, 4, 5, 6, 8, 9
_COLUMNS = 10  # _VALUE and _VALUE + 1: Y (luma rows), or U and V (chroma rows)
_CAPSULE, _FILL, _SPRITE = 0.0, 1.0, 2.0
_LABELS = 1 << 20  # the layer of the labels: the last

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: cv2 draws
    triton = None


def draw_poses_i420_batch(frames: torch.Tensor, poses: list[Poses], **options) -> torch.Tensor:
    """Draw `poses[i]` into I420 frame `frames[i]` in place (draw_poses_i420's pictures) and return frames.

    frames: uint8 (B, H*3//2, W), contiguous, W and H even. options: draw_poses_i420's keyword
    arguments (keypoint_threshold, boxes, scores, thickness).
    """
    if frames.ndim != 3 or frames.dtype != torch.uint8 or not frames.is_contiguous() or len(frames) != len(poses):
        raise InputError(f"expected contiguous uint8 I420 frames (B, H*3//2, W) and B poses; got {frames.dtype} "
                         f"{tuple(frames.shape)} and {len(poses)} poses")
    if not any(len(p) for p in poses):
        return frames
    if frames.device.type != "cuda" or triton is None:
        _draw_with_cv2(frames, poses, options)
    else:
        _draw_with_triton(frames, poses, options)
    return frames


def _draw_with_triton(frames: torch.Tensor, poses, options) -> None:
    w, h = frames.shape[2], frames.shape[1] * 2 // 3
    luma, chroma, atlas = _tables(poses, w, h, options)
    atlas = torch.from_numpy(atlas).to(frames.device, non_blocking=True)
    planes = (((0, w, h, 0),), ((w * h, w // 2, h // 2, 0), (w * h * 5 // 4, w // 2, h // 2, 1)))
    for (table, starts), on in zip((luma, chroma), planes):
        table = torch.from_numpy(table).to(frames.device, non_blocking=True)
        starts = torch.from_numpy(starts).to(frames.device, non_blocking=True)
        for offset, pw, ph, channel in on:
            grid = (triton.cdiv(pw, _BLOCK_W), triton.cdiv(ph, _BLOCK_H), len(frames))
            _draw_plane[grid](frames, offset, frames.shape[1] * w, pw, ph, table, starts, atlas, channel,
                              COLUMNS=_COLUMNS, BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W)


def _tables(poses: list[Poses], w: int, h: int, options):
    """The shapes of a batch of w x h frames: (rows, starts) for the luma plane and for the chroma
    planes (frame i's rows are rows[starts[i]:starts[i + 1]], in drawing order), and the text atlas."""
    luma, chroma, sprites = _Rows(), _Rows(), _Sprites()
    groups: dict = {}  # people with track ids and without are planned apart (colours and labels differ)
    for i, p in enumerate(poses):
        if len(p):
            groups.setdefault(p.track_ids is None, []).append(i)
    for members in groups.values():  # the people of many frames planned at once: one frame's numpy cost
        together = _concatenate([poses[i] for i in members])
        frame_of = np.repeat(members, [len(poses[i]) for i in members])  # person -> frame
        layers, labels = plan(w, h, together, **options)
        _add_layers(luma, chroma, layers, frame_of)
        _add_labels(luma, chroma, sprites, labels, frame_of, w, h)
    return luma.table(len(poses)), chroma.table(len(poses)), sprites.atlas()


def _concatenate(poses: list[Poses]) -> Poses:
    if len(poses) == 1:
        return poses[0]
    ids = None if poses[0].track_ids is None else np.concatenate([p.track_ids for p in poses])
    return Poses(np.concatenate([p.boxes for p in poses]), np.concatenate([p.box_scores for p in poses]),
                 np.concatenate([p.keypoints for p in poses]), np.concatenate([p.keypoint_scores for p in poses]),
                 poses[0].skeleton, ids)


def _draw_with_cv2(frames: torch.Tensor, poses, options) -> None:
    if frames.device.type == "cpu":
        for frame, p in zip(frames.numpy(), poses):
            draw_poses_i420(frame, p, **options)
        return
    host = frames.cpu()
    _draw_with_cv2(host, poses, options)
    frames.copy_(host)


class _Rows:
    """The shapes of a batch in drawing order, each with its frame: float32 rows, and per frame where
    its rows start once they are put frame after frame (a stable sort keeps each frame's order)."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []  # (frame, layer, person) of each row

    def add(self, rows: np.ndarray, frames, layer: int, people=0) -> None:
        self.chunks.append(rows)
        keys = np.empty((3, len(rows)), np.int64)
        keys[0], keys[1], keys[2] = frames, layer, people
        self.keys.append(keys)

    def table(self, count: int):
        """(rows, starts) for `count` frames."""
        if not self.chunks:
            table, starts = np.zeros((1, _COLUMNS), np.float32), np.zeros(count + 1, np.int32)
        else:
            frames, layers, people = np.concatenate(self.keys, axis=1)
            order = np.lexsort((people, layers, frames))  # stable: a layer's own order stays
            table = np.concatenate(self.chunks)[order]
            starts = np.searchsorted(frames[order], np.arange(count + 1)).astype(np.int32)
        return np.ascontiguousarray(table, np.float32), starts


def _capsules(segments, radius, values) -> np.ndarray:
    """Rows of capsules of one colour: segments (m, 4) x0, y0, x1, y1; values: the colour's plane values."""
    rows = np.zeros((len(segments), _COLUMNS), np.float32)
    rows[:, _KIND], rows[:, _X0:_Y1 + 1], rows[:, _RADIUS] = _CAPSULE, segments, radius
    rows[:, _VALUE:_VALUE + len(values)] = values
    return rows


def _colour(rgb):
    """((Y,), (U, V)) of an RGB colour as the cv2 drawing fills the planes."""
    (y,), (u,), (v,) = _yuv(rgb)
    return (y,), (u, v)


def _add_layers(luma: _Rows, chroma: _Rows, layers, frame_of) -> None:
    """Polylines (all of one point count within a layer) as capsules between consecutive points."""
    for layer, (lines, rgb, width, closed, owners) in enumerate(layers, 1):
        if not lines:
            continue
        points = np.stack(lines).astype(np.float32) / _ONE  # (m, n, 2) pixels
        ends = np.roll(points, -1, axis=1) if closed else points[:, 1:]
        starts = points if closed else points[:, :-1]
        segments = np.concatenate([starts, ends], axis=2).reshape(-1, 4)
        per_line = len(segments) // len(lines)
        frames = np.repeat(frame_of[owners], per_line)
        # boxes (the closed lines), one layer per colour, go person by person as in a frame of their own
        # (the colours of many frames come in another order); the other layers' order is the skeleton's
        layer, people = (0, np.repeat(owners, per_line)) if closed else (layer, 0)
        y, uv = _colour(rgb)
        discs = points.shape[1] == 2 and not closed and (lines[0][0] == lines[0][1]).all()
        luma.add(_capsules(segments, _radius(width, discs), y), frames, layer, people)
        # chroma sample j covers luma pixels 2j and 2j + 1: centre at 2j + 0.5
        chroma.add(_capsules((segments - 0.5) / 2, _radius((width + 1) >> 1, discs), uv), frames, layer, people)


def _radius(width: int, discs: bool) -> float:
    """The radius at which cv2's anti-aliased line of `width` (or its disc: a line from a point to itself)
    is half covered: width / 2 and what its anti-aliasing adds, fitted to cv2's own pictures of random
    lines and discs (its odd widths run wider; a line of width 6 covers 7.4 pixels across)."""
    extra = _DISC_EXTRA if discs else _LINE_EXTRA
    return width / 2 + extra[min(max(width, 1), len(extra)) - 1]


# by width 1, 2, ... 12 (and wider): radius - width / 2 that best matches cv2 (mean error < 2 levels)
_LINE_EXTRA = (0.14, 0.68, 1.08, 0.63, 1.03, 0.67, 0.88, 0.64, 0.73, 0.62, 0.68, 0.6)
_DISC_EXTRA = (-0.2, 0.74, 0.55, 0.53, 0.77, 0.77, 0.76, 0.75, 0.74, 0.73, 0.72, 0.7)


class _Sprites:
    """Text covers of a batch, one after another in a uint8 atlas."""

    def __init__(self):
        self.masks: list[np.ndarray] = []
        self.size = 0

    def add(self, mask: np.ndarray) -> int:
        self.masks.append(mask)
        self.size += mask.size
        return self.size - mask.size

    def atlas(self) -> np.ndarray:
        return np.concatenate([m.reshape(-1) for m in self.masks]) if self.masks else np.zeros(1, np.uint8)


@functools.lru_cache(maxsize=2048)
def _text_cover(text, org, size, font, font_scale, font_thickness) -> np.ndarray:
    """`text` as cv2.putText anti-aliases it on a tag of `size` (w, h), 0..255."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.putText(mask, text, org, font, font_scale, 255, font_thickness, cv2.LINE_AA)
    return mask


def _add_labels(luma: _Rows, chroma: _Rows, sprites: _Sprites, labels, frame_of, w: int, h: int) -> None:
    """A label: its tag filled with the person's colour, then the text's cover in the text colour."""
    on_luma, on_chroma = [], []  # (person, kind, x0, y0, x1, y1, values, atlas offset, sprite width)
    for ((x1, y1, x2, y2), text, org, rgb, text_rgb, font, font_scale, font_thickness), person in labels:
        (y,), uv = _colour(rgb)
        (ty,), tuv = _colour(text_rgb)
        cover = _text_cover(text, (org[0] - x1, org[1] - y1), (x2 - x1 + 1, y2 - y1 + 1), font, font_scale,
                            font_thickness)
        on_luma += [(person, _FILL, x1, y1, x2, y2, (y, 0), 0, 0),
                    (person, _SPRITE, x1, y1, x2, y2, (ty, 0), sprites.add(cover), x2 - x1 + 1)]
        cx1, cy1, cx2, cy2 = x1 >> 1, y1 >> 1, x2 >> 1, y2 >> 1
        on_chroma.append((person, _FILL, cx1, cy1, cx2, cy2, uv, 0, 0))
        cx1, cy1, cx2, cy2 = max(cx1, 0), max(cy1, 0), min(cx2 + 1, w // 2), min(cy2 + 1, h // 2)
        if cx2 > cx1 and cy2 > cy1:
            cover = half_cover(text, (org[0] - 2 * cx1, org[1] - 2 * cy1), (cx2 - cx1, cy2 - cy1), font,
                               font_scale, font_thickness)
            on_chroma.append((person, _SPRITE, cx1, cy1, cx2 - 1, cy2 - 1, tuv, sprites.add(cover), cx2 - cx1))
    for rows, shapes in ((luma, on_luma), (chroma, on_chroma)):
        if shapes:
            table = np.zeros((len(shapes), _COLUMNS), np.float32)
            table[:, [_KIND, _X0, _Y0, _X1, _Y1]] = [s[1:6] for s in shapes]
            table[:, _VALUE:_VALUE + 2] = [s[6] for s in shapes]
            table[:, [_OFFSET, _WIDTH]] = [s[7:9] for s in shapes]
            people = np.array([s[0] for s in shapes])
            rows.add(table, frame_of[people], _LABELS, people)  # after every layer, person by person


_BLOCK_H, _BLOCK_W = 16, 64

if triton is not None:
    @triton.jit
    def _draw_plane(frames, offset, frame_stride, width, height, rows, starts, atlas, channel,
                    COLUMNS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """One tile of one plane of one frame: every shape of the frame in order, blended by its cover
        (skipped when its box misses the tile). Plane rows are `width` apart."""
        tx, ty, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        ys = ty * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        xs = tx * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        inside = (ys < height) & (xs < width)
        pointers = frames + b.to(tl.int64) * frame_stride + offset + ys * width + xs
        pixels = tl.load(pointers, mask=inside, other=0).to(tl.float32)
        fx, fy = xs.to(tl.float32), ys.to(tl.float32)
        left, top = (tx * BLOCK_W).to(tl.float32), (ty * BLOCK_H).to(tl.float32)
        right, bottom = left + BLOCK_W - 1, top + BLOCK_H - 1
        for i in range(tl.load(starts + b), tl.load(starts + b + 1)):
            row = rows + i * COLUMNS
            x0, y0, x1, y1 = tl.load(row + 1), tl.load(row + 2), tl.load(row + 3), tl.load(row + 4)
            reach = tl.load(row + 5) + 1.0
            if ((tl.minimum(x0, x1) - reach <= right) & (tl.maximum(x0, x1) + reach >= left)
                    & (tl.minimum(y0, y1) - reach <= bottom) & (tl.maximum(y0, y1) + reach >= top)):
                kind = tl.load(row)
                if kind == 0.0:  # capsule: cover by the distance to the segment, one pixel of edge
                    dx, dy = x1 - x0, y1 - y0
                    t = ((fx - x0) * dx + (fy - y0) * dy) / tl.maximum(dx * dx + dy * dy, 1e-12)
                    t = tl.minimum(tl.maximum(t, 0.0), 1.0)
                    ex, ey = fx - (x0 + t * dx), fy - (y0 + t * dy)
                    cover = tl.minimum(tl.maximum(reach - 0.5 - tl.sqrt(ex * ex + ey * ey), 0.0), 1.0)
                else:
                    within = (fx >= x0) & (fx <= x1) & (fy >= y0) & (fy <= y1)
                    if kind == 1.0:
                        cover = within.to(tl.float32)
                    else:
                        at = (tl.load(row + 8).to(tl.int32) + (fy - y0).to(tl.int32) * tl.load(row + 9).to(tl.int32)
                              + (fx - x0).to(tl.int32))
                        cover = tl.load(atlas + at, mask=within & inside, other=0).to(tl.float32) / 255.0
                value = tl.load(row + 6 + channel)
                pixels = pixels + (value - pixels) * cover
        tl.store(pointers, (pixels + 0.5).to(tl.uint8), mask=inside)
