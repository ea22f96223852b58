"""Drawing, kept apart from the results: skeletons, boxes, scores, track ids and heatmap overlays.

Every function takes an RGB uint8 image and returns a new one; the input is never changed. The one
exception, `draw_poses_i420`, draws the pictures of `draw_poses` into an I420 video frame in place
(no colour conversion of the frame), for the mp4 writer.
"""
from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np

from rapidpose.errors import InputError
from rapidpose.results import Poses
from rapidpose.topdown.geometry import udp_matrices
from rapidpose.video.sources import i420_planes

_SHIFT = 4  # sub-pixel drawing: cv2 takes coordinates as integers scaled by 2**_SHIFT
_ONE = 1 << _SHIFT
_LIMIT = 1e6  # coordinates beyond this many pixels are treated as invalid (and would overflow cv2)
_BOX_COLOR = (66, 135, 245)  # RGB, boxes of people without a track id
_LEFT, _RIGHT, _MIDDLE = (0, 200, 0), (255, 128, 0), (51, 153, 255)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"expected an RGB uint8 image of shape (H, W, 3); got {image.dtype} {image.shape}: "
            "convert it first, e.g. cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)"
        )
    return image


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per track: hues spread by the golden ratio."""
    hue = (int(track_id) * 0.6180339887498949) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _keypoint_colors(names) -> list[tuple[int, int, int]]:
    colors = []
    for name in names:
        lower = name.lower()
        if "left" in lower and "right" not in lower:
            colors.append(_LEFT)
        elif "right" in lower and "left" not in lower:
            colors.append(_RIGHT)
        else:
            colors.append(_MIDDLE)
    return colors


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> cv2's fixed-point integers (centre of pixel i is i)."""
    return np.round(points * _ONE).astype(np.int64)


def draw_poses(image, poses: Poses, *, keypoint_threshold: float = 0.3, boxes: bool = True,
               scores: bool = True, thickness: int | None = None) -> np.ndarray:
    """Draw each person's skeleton, keypoints, box and score (and track id) on a copy of `image`.

    An edge is drawn only when both its keypoints score above `keypoint_threshold`; keypoints that are
    not finite are skipped. `thickness` (lines, in pixels) grows with the image size when None.
    """
    out = _check_image(image).copy()
    if len(poses):
        _paint((_Plane(out),), out.shape[1], out.shape[0], poses, keypoint_threshold, boxes, scores, thickness)
    return out


def draw_poses_i420(yuv, poses: Poses, *, keypoint_threshold: float = 0.3, boxes: bool = True,
                    scores: bool = True, thickness: int | None = None) -> np.ndarray:
    """Draw what `draw_poses` draws straight into an I420 frame, in place, and return it.

    yuv: uint8 (H*3//2, W), C-contiguous, W and H even: the Y plane, then U and V at (H/2, W/2), as
    PyAV decodes yuv420p (sources.Frame.yuv). Y is drawn at full resolution with each colour's luma,
    U and V at half resolution (coordinates and line widths halved) with its chroma, BT.601 limited
    range, so that cv2.COLOR_YUV2RGB_I420 gives the colours of `draw_poses` back. No colour conversion
    of the frame.
    """
    yuv = _check_i420(yuv)
    if len(poses):
        w, h = yuv.shape[1], yuv.shape[0] * 2 // 3
        y, u, v = i420_planes(yuv)  # views: the planes are the frame's own memory
        planes = (_Plane(y, 0), _Plane(u, 1), _Plane(v, 2))
        _paint(planes, w, h, poses, keypoint_threshold, boxes, scores, thickness)
    return yuv


def _check_i420(yuv) -> np.ndarray:
    if not isinstance(yuv, np.ndarray) or yuv.ndim != 2 or yuv.dtype != np.uint8 or yuv.shape[0] % 3 \
            or yuv.shape[1] % 2:  # (H*3//2) % 3 == 0 exactly when H is even
        raise InputError(f"expected an I420 uint8 frame of shape (H*3//2, W), W and H even; got "
                         f"{getattr(yuv, 'dtype', type(yuv).__name__)} {getattr(yuv, 'shape', '')}")
    if not (yuv.flags.c_contiguous and yuv.flags.writeable):
        raise InputError("the I420 frame must be a writeable C-contiguous array: it is drawn into in place")
    return yuv


@functools.lru_cache(maxsize=4096)  # track colours of a long stream: a bounded cache
def _yuv(rgb) -> tuple:
    """The (Y,), (U,), (V,) values of an RGB colour, BT.601 limited range, as cv2.COLOR_YUV2RGB_I420
    inverts them."""
    r, g, b = (c / 255.0 for c in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return tuple((min(max(int(round(c)), 0), 255),) for c in (y, u, v))


class _Plane:
    """Issues the cv2 drawing calls on one plane: an RGB image (colours as given), or the Y, U or V plane
    of an I420 frame (channel 0, 1, 2: the colour's luma or chroma; U and V at half resolution).

    Takes what _paint decides in full-resolution terms: points in cv2's fixed point (2**_SHIFT per
    pixel), widths in pixels. A half-resolution plane draws them with one more bit of shift (half the
    coordinates and radii), half the widths (at least 1), and a quarter of a pixel up and left: chroma
    sample j covers luma pixels 2j and 2j + 1, its centre is at 2j + 0.5.
    """

    __slots__ = ("image", "channel", "half", "shift")

    def __init__(self, image: np.ndarray, channel: int | None = None):
        self.image, self.channel = image, channel
        self.half = channel is not None and channel > 0
        self.shift = _SHIFT + self.half

    def color(self, rgb):
        return rgb if self.channel is None else _yuv(rgb)[self.channel]

    def _width(self, width: int) -> int:
        return (width + 1) >> 1 if self.half else width

    def polylines(self, lines: list, rgb, width: int, closed: bool = False):
        """Anti-aliased polylines of one colour in one cv2 call: (n, 2) int32 arrays of fixed-point points.
        A line from a point to itself is a filled disc of diameter `width` (cv2's round line caps)."""
        if not lines:
            return
        if self.half:
            lines = [line - (_ONE // 2) for line in lines]
        cv2.polylines(self.image, lines, closed, self.color(rgb), self._width(width), cv2.LINE_AA, self.shift)

    def label(self, tag, text, org, rgb, text_rgb, font, font_scale, font_thickness):
        """A filled tag (x1, y1, x2, y2 in whole pixels) with `text` at `org` on it."""
        x1, y1, x2, y2 = tag
        image = self.image
        if not self.half:
            cv2.rectangle(image, (x1, y1), (x2, y2), self.color(rgb), -1)
            cv2.putText(image, text, org, font, font_scale, self.color(text_rgb), font_thickness, cv2.LINE_AA)
            return
        # the tag at half resolution; the text's cover of each 2x2 block takes the chroma to the text's
        x1, y1, x2, y2 = x1 >> 1, y1 >> 1, x2 >> 1, y2 >> 1
        cv2.rectangle(image, (x1, y1), (x2, y2), self.color(rgb), -1)
        h, w = image.shape
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
        if x2 <= x1 or y2 <= y1:
            return
        cover = half_cover(text, (org[0] - 2 * x1, org[1] - 2 * y1), (x2 - x1, y2 - y1), font, font_scale,
                           font_thickness).astype(np.uint16)
        region = image[y1:y2, x1:x2]
        region[:] = (region * (255 - cover) + self.color(text_rgb)[0] * cover + 127) // 255


def _paint(planes, w: int, h: int, poses: Poses, keypoint_threshold, boxes, scores, thickness) -> None:
    """Have each of `planes` draw what `plan` decides, layer by layer over all people with one cv2 call
    per colour: a video frame costs a few dozen calls instead of hundreds, each of which takes the GIL
    again."""
    layers, labels = plan(w, h, poses, keypoint_threshold, boxes, scores, thickness)
    for plane in planes:
        for lines, color, width, closed, _ in layers:
            plane.polylines(lines, color, width, closed)
        for label, _ in labels:
            plane.label(*label)


def plan(w: int, h: int, poses: Poses, keypoint_threshold=0.3, boxes=True, scores=True, thickness=None):
    """What to draw for `poses` on a w x h picture, in drawing order: `layers` (boxes, edges, white rims,
    keypoints), each (lines, RGB colour, width in pixels, closed, owners) with lines (n, 2) int32 points
    in cv2's fixed point (2**_SHIFT per pixel; a line from a point to itself is a disc of diameter
    `width`) and owners the person of each line; `labels`, each (the arguments of _Plane.label, person).
    Shared by the cv2 drawing and gpu_draw (which plans the people of many frames at once)."""
    n = len(poses)
    if thickness is None:
        thickness = max(1, int(round(max(h, w) / 320)))
    thickness = max(1, int(thickness))
    skeleton = poses.skeleton
    k = poses.keypoints.shape[1]
    radius = max(1, int(round(thickness * (1.5 if k <= 30 else 0.75))))

    edges = np.asarray(skeleton.edges, np.int64).reshape(-1, 2)
    edges_ok = (edges >= 0).all(axis=1) & (edges < k).all(axis=1)
    edge_colors = [tuple(int(c) for c in color) for color in skeleton.edge_colors]
    if len(edge_colors) != len(edges):
        edge_colors = [_MIDDLE] * len(edges)
    edges, edge_colors = edges[edges_ok], [c for c, ok in zip(edge_colors, edges_ok) if ok]
    point_colors = _keypoint_colors(skeleton.keypoints) if len(skeleton.keypoints) == k else [_MIDDLE] * k

    keypoints = np.asarray(poses.keypoints, np.float64)
    finite = np.isfinite(keypoints).all(axis=-1) & (np.abs(keypoints) < _LIMIT).all(axis=-1)
    visible = finite & (np.nan_to_num(poses.keypoint_scores, nan=-np.inf) > keypoint_threshold)
    fixed = _fixed(np.where(finite[..., None], keypoints, 0.0)).astype(np.int32)  # (n, k, 2)
    ids = poses.track_ids
    colors = [track_color(ids[i]) if ids is not None else _BOX_COLOR for i in range(n)]
    all_boxes = np.asarray(poses.boxes, np.float64).reshape(n, 4)
    box_ok = np.isfinite(all_boxes).all(axis=1) & (np.abs(np.nan_to_num(all_boxes, nan=_LIMIT)) < _LIMIT).all(axis=1)

    layers = []  # (lines, colour, width, closed, owners), in drawing order
    if boxes:
        corners = _fixed(np.where(box_ok[:, None], all_boxes, 0.0)).astype(np.int32)
        for color, people in _by_color(colors, np.flatnonzero(box_ok)):
            layers.append(([c[[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2) for c in corners[people]], color,
                           thickness, True, np.array(people)))
    drawn = visible[:, edges[:, 0]] & visible[:, edges[:, 1]]  # (n, edges)
    for color, which in _by_color(edge_colors, range(len(edges))):
        segments = fixed[:, edges[which]][drawn[:, which]]  # (m, 2, 2), person after person
        layers.append((list(segments), color, thickness, False, np.nonzero(drawn[:, which])[0]))
    owners, kinds = np.nonzero(visible)
    joints = list(fixed[owners, kinds][:, None].repeat(2, 1))  # points as zero-length lines
    if radius >= 2:  # a light rim keeps joints apart from the limbs of the same colour
        layers.append((joints, (255, 255, 255), 2 * radius + 2, False, owners))
    joint_colors = [point_colors[j] for j in kinds]
    rank = {color: r for r, color in enumerate(dict.fromkeys(point_colors))}  # the skeleton's order: the
    # same from frame to frame whichever joints show (overlapping joints do not swap on top)
    for color, which in sorted(_by_color(joint_colors, range(len(joints))), key=lambda group: rank[group[0]]):
        layers.append(([joints[m] for m in which], color, 2 * radius, False, owners[which]))

    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = max(0.35, 0.3 * thickness)
    font_thickness = max(1, thickness // 2)
    labels = []
    for i in np.flatnonzero(box_ok):
        text = []
        if ids is not None:
            text.append(f"id {int(ids[i])}")
        if scores and np.isfinite(poses.box_scores[i]):
            text.append(f"{float(poses.box_scores[i]):.2f}")
        if text:
            labels.append((_label_layout(" ".join(text), all_boxes[i], colors[i], w, h, font, font_scale,
                                         font_thickness), i))
    return layers, labels


@functools.lru_cache(maxsize=2048)  # the same label (text, size, place on the 2x2 grid) frame after frame
def half_cover(text, org, size, font, font_scale, font_thickness) -> np.ndarray:
    """How much `text` covers each pixel of a half-resolution region of `size` (w, h), uint8 0..255 (read
    only: cached): the text drawn at full resolution (`org` relative to the region's top-left, in full-
    resolution pixels) and each 2x2 block averaged. Hershey glyph advances, rounded per character, do
    not halve: text drawn at half scale would drift off the text on the Y plane."""
    w, h = size
    mask = np.zeros((2 * h, 2 * w), np.uint8)
    cv2.putText(mask, text, org, font, font_scale, 255, font_thickness, cv2.LINE_AA)
    cover = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
    cover.flags.writeable = False
    return cover


def _by_color(colors, members):
    """(colour, [members of that colour]) in the order the colours first appear."""
    groups: dict = {}
    for m in members:
        groups.setdefault(colors[m], []).append(m)
    return groups.items()


def _label_layout(text, box, color, w, h, font, font_scale, font_thickness):
    """Text on a filled tag at the box's top-left corner: above the box, or inside it at the top edge.
    The arguments of _Plane.label."""
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, font_thickness)
    pad = max(1, font_thickness)
    x = int(round(min(max(box[0], 0), max(w - tw - 2 * pad, 0))))
    top = int(round(box[1])) - th - baseline - 2 * pad
    if top < 0:
        top = max(int(round(box[1])), 0)
    top = min(top, max(h - th - baseline - 2 * pad, 0))
    text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
    return ((x, top, x + tw + 2 * pad, top + th + baseline + 2 * pad), text, (x + pad, top + pad + th), color,
            text_color, font, font_scale, font_thickness)


def draw_heatmaps(image, heatmaps, center, scale, *, alpha: float = 0.5) -> np.ndarray:
    """Overlay the network's heatmaps on a copy of `image`, warped back from each person's crop.

    heatmaps: (N, K, h, w) for N people, with the crop `center` and `scale` (N, 2) the pipeline used.
    Per person the maximum over the K channels, clipped at 0 and normalised to [0, 1], is mapped back
    with the UDP inverse; people combine by maximum, then a JET colour map is blended in where the map
    is above zero (fully `alpha` from a tenth of the peak up).
    """
    out = _check_image(image).copy()
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim == 3:
        heatmaps = heatmaps[None]
    if heatmaps.ndim != 4:
        raise InputError(f"heatmaps must be (N, K, h, w); got shape {heatmaps.shape}")
    n, _, hh, hw = heatmaps.shape
    if n == 0 or heatmaps.shape[1] == 0:
        return out
    center = np.asarray(center, np.float64).reshape(-1, 2)
    scale = np.asarray(scale, np.float64).reshape(-1, 2)
    if len(center) != n or len(scale) != n:
        raise InputError(f"need one center and scale per person: {n} heatmaps, "
                         f"{len(center)} centers, {len(scale)} scales")
    h, w = out.shape[:2]
    matrices = udp_matrices(center, scale, output_size=(hw, hh))
    combined = np.zeros((h, w), np.float32)
    for i in range(n):
        if not (np.isfinite(matrices[i]).all() and (scale[i] > 0).all()):
            continue
        peak = np.nan_to_num(heatmaps[i], nan=0.0, posinf=0.0, neginf=0.0).max(axis=0)
        np.clip(peak, 0.0, None, out=peak)
        top = float(peak.max())
        if top <= 0:
            continue
        peak /= top
        warped = cv2.warpAffine(peak, matrices[i], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.maximum(combined, warped, out=combined)

    colored = cv2.applyColorMap(np.round(np.clip(combined, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (float(alpha) * np.clip(combined * 10.0, 0.0, 1.0))[..., None]
    blended = out.astype(np.float32) * (1.0 - weight) + colored * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw_frame(pixels, poses):
    """`poses` drawn into I420 pixels (H*3//2, W) in place (the encoder takes I420 without a colour
    conversion), or onto a copy of RGB pixels (H, W, 3)."""
    return draw_poses_i420(pixels, poses) if pixels.ndim == 2 else draw_poses(pixels, poses)


def save_drawn(image, poses: Poses, stem, keypoint_threshold: float = 0.3, heatmaps: bool = False,
               input_size=(192, 256)) -> None:
    """`stem`.jpg: the RGB image with its poses drawn; with heatmaps (and poses.heatmaps kept),
    `stem`_heatmaps.jpg too: what `rapidpose predict --draw [--heatmaps]` writes for each photo."""
    from rapidpose.topdown.geometry import boxes_to_center_scale

    drawn = draw_poses(image, poses, keypoint_threshold=keypoint_threshold)
    cv2.imwrite(f"{stem}.jpg", drawn[:, :, ::-1])
    if heatmaps and len(poses) and poses.heatmaps is not None:
        overlay = draw_heatmaps(image, poses.heatmaps, *boxes_to_center_scale(poses.boxes, input_size))
        cv2.imwrite(f"{stem}_heatmaps.jpg", overlay[:, :, ::-1])
