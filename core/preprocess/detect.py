"""Face detection behind one small interface: mediapipe's bundled detector, or OpenCV's Haar cascade.

``detect_faces(photo, detector="auto")`` uses mediapipe 0.10.21 when it can be imported with its bundled
models and falls back, with a logged warning, to the frontal-face Haar cascade shipped inside the OpenCV wheel
(no download). Detection runs on a small preview decoded at reduced resolution; when that finds no face, or
only faces near the smallest the preview shows, a zoomed pass looks at overlapping tiles of the photo (2× and
4×), so small faces in large photos are found too. Boxes come back in full-photo pixels (x right, y down,
pixel centres at integer + 0.5).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import cv2
import numpy as np

from ..errors import Pixel3DMMError
from . import _mediapipe
from .intake import REDUCTIONS, Photo, to_uint8_rgb
from .transform import CropTransform, render_crop

logger = logging.getLogger(__name__)

DetectorName = Literal["auto", "mediapipe", "opencv"]

MEDIAPIPE_PREVIEW = 256
"""Long side (px) of the preview mediapipe sees. Its models work at 128² / 192² anyway, and a fixed preview
size makes the box independent of the photo's resolution (within about 1 px of the original scale)."""
REFINE_REGION = 3.0
"""mediapipe boxes are refined by detecting again on a square this many box sides wide around the face,
rendered at ``MEDIAPIPE_PREVIEW`` px: accurate for faces that are small in the photo, and resolution-independent."""
OPENCV_PREVIEW = 480
"""Long side (px) of the preview the Haar cascade scans (faces down to 24 px there, 5 % of the side)."""
ZOOMS = (2, 4)
"""Zoom factors of the second pass: tiles ``long side / zoom`` wide, overlapping by a quarter, each scanned at
the detector's preview size. A face up to a quarter tile wide lies wholly inside some tile; a larger one shows
well at the zoom below (or in the preview, the zoom 1). Zooms whose tiles would be narrower than the preview (no
detail to gain) are skipped. On a 1600×1200 photo with mediapipe that is 6 + 20 tiles, and faces down to about
25 px wide are found."""
SURE_SCORE = 0.75
"""mediapipe's confidence a face needs, on the preview or on a second look at it (see :func:`_refine`), to
count when another face is surer; a face from the zoomed pass, where the many tiles make false alarms likelier,
needs it on the second look. When no face reaches it, the most confident one is kept: a photo with one unclear
face still gets fitted. Measured on the public-domain test photos pasted small into large ones: faces 0.90-0.98,
false alarms on a spacesuit's collar 0.54-0.67."""
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# The Haar box sits higher than mediapipe's (refined) box; its centre is moved down by 0.12 of its side to
# match (measured on the astronaut and Grace Hopper photos: 0.12 and 0.11; the sides agree within ±12 %).
_HAAR_SHIFT_Y = 0.12


class DetectorUnavailableError(Pixel3DMMError):
    """The face detector that was asked for explicitly cannot run here."""


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """One detected face in full-photo pixels.

    Attributes
    ----------
    box : tuple[float, float, float, float]
        (x0, y0, w, h) of the face box (mediapipe's convention: about brows to chin, cheek to cheek).
    score : float
        mediapipe's confidence in [0, 1]; for OpenCV the cascade's level weight (larger is surer, unbounded).
    keypoints : np.ndarray or None
        (6, 2) mediapipe keypoints (right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
        tragion; subject's sides), or None for OpenCV.
    detector : str
        ``"mediapipe"`` or ``"opencv"``.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray | None
    detector: str

    @property
    def size(self) -> float:
        """Longer side of the box in photo px."""
        return max(self.box[2], self.box[3])

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in photo px."""
        return self.box[0] + self.box[2] / 2, self.box[1] + self.box[3] / 2


class FaceDetector(Protocol):
    """What a detector provides: a name, its preview size, the smallest face it finds there, and faces found on
    uint8 RGB images, in each image's pixels."""

    name: str
    preview_size: int
    min_face: int  # px in an image of ``preview_size``: smaller faces are missed

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """Faces on each of ``images`` ((H, W, 3) uint8), boxes and keypoints in its pixels, any order."""


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _distinct(found: list[FaceDetection]) -> list[FaceDetection]:
    """Most confident first, dropping a box that overlaps a kept one or has its centre inside one."""
    kept: list[FaceDetection] = []
    for det in sorted(found, key=lambda d: -d.score):
        cx, cy = det.center
        if all(_iou(det.box, k.box) < 0.3 and not (k.box[0] <= cx <= k.box[0] + k.box[2]
                                                    and k.box[1] <= cy <= k.box[1] + k.box[3]) for k in kept):
            kept.append(det)
    return kept


class MediapipeDetector:
    """mediapipe's bundled BlazeFace: short-range and full-range models, overlapping boxes merged."""

    name = "mediapipe"
    preview_size = MEDIAPIPE_PREVIEW
    min_face = 16  # measured: 100 px faces found in a 1600 px photo at the 256 px preview, 83 px faces not

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """See :class:`FaceDetector`; raises ``MediapipeUnavailableError`` when mediapipe cannot run."""
        per_model = [_mediapipe.detect(images, model_selection=model) for model in (0, 1)]
        return [_distinct([FaceDetection(tuple(float(v) for v in box), score, kps, self.name)
                           for found in per_image for box, score, kps in found])
                for per_image in zip(*per_model)]


class OpenCVDetector:
    """OpenCV's frontal-face Haar cascade (inside the opencv wheel), boxes mapped to mediapipe's convention."""

    name = "opencv"
    preview_size = OPENCV_PREVIEW
    min_face = 24  # the cascade's minSize

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """See :class:`FaceDetector`."""
        return [self._detect(rgb) for rgb in images]

    def _detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes, _, weights = _haar_cascade().detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=8,
                                                              minSize=(self.min_face, self.min_face),
                                                              outputRejectLevels=True)
        out = []
        for (x, y, w, h), weight in zip(np.reshape(boxes, (-1, 4)), np.reshape(weights, -1)):
            side = float(max(w, h))
            cx, cy = x + w / 2, y + h / 2 + _HAAR_SHIFT_Y * side
            out.append(FaceDetection((cx - side / 2, cy - side / 2, side, side), float(weight), None, self.name))
        return out


@functools.lru_cache(maxsize=1)
def _haar_cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
    if cascade.empty():
        raise DetectorUnavailableError(f"OpenCV's {HAAR_CASCADE} could not be loaded; reinstall the add-on.")
    return cascade


def preview(photo: Photo, long_side: int) -> tuple[np.ndarray, float, float]:
    """A uint8 preview of the photo whose longer side is exactly ``long_side``.

    Decodes at the largest reduction that still has at least ``long_side`` pixels on the long side, then
    resizes (area averaging down, bilinear up).

    Returns
    -------
    rgb : np.ndarray
        (h, w, 3) uint8.
    sx, sy : float
        Photo px per preview px (photo x = preview x · sx, continuous coordinates).
    """
    height, width = photo.original_size
    reduction = max(r for r in REDUCTIONS if r == 1 or max(height, width) / r >= long_side)
    pixels = to_uint8_rgb(photo.pixels(reduction))
    rh, rw = pixels.shape[:2]
    k = long_side / max(rh, rw)
    pw, ph = max(1, round(rw * k)), max(1, round(rh * k))
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    small = pixels if (pw, ph) == (rw, rh) else cv2.resize(pixels, (pw, ph), interpolation=interp)
    return np.ascontiguousarray(small), reduction * rw / pw, reduction * rh / ph


def _in_photo(det: FaceDetection, region: CropTransform) -> FaceDetection:
    """A detection on a rendered region (crop px) mapped to photo px."""
    x0, y0 = region.to_photo(np.array(det.box[:2]))
    kps = region.to_photo(det.keypoints) if det.keypoints is not None else None
    return FaceDetection((float(x0), float(y0), det.box[2] / region.scale, det.box[3] / region.scale),
                         det.score, kps, det.detector)


def _refine(detector: MediapipeDetector, photo: Photo, det: FaceDetection) -> FaceDetection | None:
    """Detect again on a face-centred square: the face found there, or None when the second look disagrees."""
    cx, cy = det.center
    side = REFINE_REGION * det.size
    region = CropTransform(cx - side / 2, cy - side / 2, side, detector.preview_size)
    (found,) = detector.detect([to_uint8_rgb(render_crop(photo, region))])
    centre = np.array([detector.preview_size / 2] * 2)
    expected = det.size * region.scale
    close = [d for d in found if np.linalg.norm(np.array(d.center) - centre) < 0.25 * expected
             and 0.67 < d.size / expected < 1.5]
    if not close:
        return None
    best = min(close, key=lambda d: np.linalg.norm(np.array(d.center) - centre))
    return replace(_in_photo(best, region), detector=det.detector)


def _tile_starts(length: float, tile: float) -> list[float]:
    """Starts of tiles ``tile`` wide that cover [0, length) overlapping by a quarter tile, the last one at the
    end."""
    stride = 0.75 * tile
    count = max(1, int(np.ceil((length - tile) / stride)) + 1)
    return [min(i * stride, max(length - tile, 0.0)) for i in range(count)]


def _zoomed(detector: FaceDetector, photo: Photo) -> list[FaceDetection]:
    """Faces found on overlapping tiles of the photo at each of :data:`ZOOMS`, in photo px.

    Boxes cut by a tile's inner edge are dropped: a face small enough for this zoom lies wholly inside a
    neighbouring tile (see :data:`ZOOMS`).
    """
    height, width = photo.original_size
    regions = []
    for zoom in ZOOMS:
        tile = max(height, width) / zoom
        if tile < detector.preview_size:
            continue
        regions += [CropTransform(x0, y0, tile, detector.preview_size)
                    for y0 in _tile_starts(height, tile) for x0 in _tile_starts(width, tile)]
    if not regions:
        return []
    found = []
    images = [to_uint8_rgb(render_crop(photo, region)) for region in regions]
    for region, faces in zip(regions, detector.detect(images)):
        margin = 0.02 * region.size
        x1, y1 = region.x0 + region.size, region.y0 + region.size
        for det in (_in_photo(d, region) for d in faces):
            x, y, w, h = det.box
            if ((x > region.x0 + margin or region.x0 <= 0) and (y > region.y0 + margin or region.y0 <= 0)
                    and (x + w < x1 - margin or x1 >= width) and (y + h < y1 - margin or y1 >= height)):
                found.append(det)
    return found


def _run(detector: FaceDetector, photo: Photo) -> list[FaceDetection]:
    rgb, sx, sy = preview(photo, detector.preview_size)
    (on_preview,) = detector.detect([rgb])
    found = []
    for det in on_preview:
        x, y, w, h = det.box
        kps = None if det.keypoints is None else det.keypoints * np.array([sx, sy])
        found.append(FaceDetection((x * sx, y * sy, w * sx, h * sy), det.score, kps, det.detector))
    zoomed = []
    if max((det.size for det in on_preview), default=0.0) < 2 * detector.min_face:
        # nothing, or only faces near the smallest the preview shows (more may be hiding): look closer
        zoomed = _distinct(_zoomed(detector, photo))
    faces = _distinct(found + zoomed)
    if isinstance(detector, MediapipeDetector):
        # a face from the preview keeps its box when the second look disagrees; one from the zoomed pass must
        # be confirmed (see SURE_SCORE)
        looked = [(_refine(detector, photo, det), det) for det in faces]
        faces = [again or det for again, det in looked
                 if det not in zoomed or (again is not None and again.score >= SURE_SCORE)]
        sure = [face for face in faces if face.score >= SURE_SCORE]
        faces = sure or sorted(faces, key=lambda d: -d.score)[:1]
    return sorted(faces, key=lambda d: -d.box[2] * d.box[3])


def detect_faces(photo: Photo, *, detector: DetectorName = "auto") -> list[FaceDetection]:
    """Find faces in a photo, largest first.

    Parameters
    ----------
    photo : Photo
    detector : {"auto", "mediapipe", "opencv"}
        ``"auto"``: mediapipe when it works, else (warning logged) OpenCV; OpenCV also gets a try when mediapipe
        finds nothing. ``"mediapipe"`` raises if mediapipe cannot run.

    Returns
    -------
    list[FaceDetection]
        In full-photo pixels, sorted by box area, largest first; empty when no face was found.

    Raises
    ------
    DetectorUnavailableError
        ``detector="mediapipe"`` was asked for and mediapipe cannot run.
    """
    if detector not in ("auto", "mediapipe", "opencv"):
        raise ValueError(f"unknown detector {detector!r}; use 'auto', 'mediapipe' or 'opencv'")
    if detector == "opencv":
        return _run(OpenCVDetector(), photo)
    try:
        found = _run(MediapipeDetector(), photo)
    except _mediapipe.MediapipeUnavailableError as exc:
        if detector == "mediapipe":
            raise DetectorUnavailableError(f"mediapipe cannot run here ({exc}); choose the OpenCV detector for "
                                           f"'{photo.name}'.") from exc
        logger.warning("mediapipe unavailable (%s); detecting faces in %s with OpenCV's Haar cascade instead",
                       exc, photo.source)
        return _run(OpenCVDetector(), photo)
    if found or detector == "mediapipe":
        return found
    logger.info("mediapipe found no face in %s; trying OpenCV's Haar cascade", photo.source)
    return _run(OpenCVDetector(), photo)
