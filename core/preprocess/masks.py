"""Region masks on the 512² crop, from the face mesh (or, without landmarks, rough stand-ins).

The reference parses faces with a CelebAMask-style network; here the regions are polygons of mediapipe's own
face-mesh index sets (``FACEMESH_FACE_OVAL``, ``_LIPS``, ``_LEFT_EYE``, ``_LEFT_EYEBROW``, ``_NOSE``, ...),
rasterised with sub-pixel precision. Masks are (S, S) bool with keys :data:`MASK_KEYS`; the fitter combines them
as the reference does (``core.fit.targets``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MASK_KEYS = ("face", "skin", "brows", "nose", "lips", "eyes", "mouth", "foreground", "background", "valid")
"""Keys of every mask dict; ``valid`` (pixels from the photo, not padding) is never approximate."""
_PARTS = ("brows", "nose", "lips", "eyes", "mouth")
_SHIFT = 4  # fixed-point bits for cv2.fillPoly


def _paths(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Chain unordered edges into vertex paths; a closed loop repeats its first vertex at the end."""
    edges = list(edges)
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    unused = {frozenset(e) for e in edges}
    paths = []
    while unused:
        ends = [v for v, n in neighbours.items() if len(n) == 1 and any(frozenset((v, m)) in unused for m in n)]
        start = min(ends) if ends else min(next(iter(unused)))
        path = [start]
        while True:
            nxt = [m for m in neighbours[path[-1]] if frozenset((path[-1], m)) in unused]
            if not nxt:
                break
            unused.discard(frozenset((path[-1], nxt[0])))
            path.append(nxt[0])
        paths.append(path)
    return paths


def _fill(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Rasterise (K, 2) polygons in continuous crop px (pixel centres at +0.5) into an (S, S) bool mask."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round((p - 0.5) * (1 << _SHIFT)).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def _area(polygon: np.ndarray) -> float:
    return abs(float(cv2.contourArea(polygon.astype(np.float32))))


def _loop_polygons(landmarks: np.ndarray, edges: Iterable[tuple[int, int]]) -> list[np.ndarray]:
    """Closed loops of an index set as polygons, largest first."""
    loops = [landmarks[p[:-1]] for p in _paths(edges) if p[0] == p[-1]]
    return sorted(loops, key=_area, reverse=True)


def _band_polygon(landmarks: np.ndarray, edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Two open lines (e.g. the lower and upper edge of a brow) joined into one polygon."""
    first, second = (landmarks[p] for p in _paths(edges)[:2])
    if np.linalg.norm(first[-1] - second[0]) < np.linalg.norm(first[-1] - second[-1]):
        return np.concatenate([first, second])
    return np.concatenate([first, second[::-1]])


def masks_from_landmarks(landmarks: np.ndarray, size: int, valid: np.ndarray,
                         foreground: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Region masks from the 478-point face mesh.

    Parameters
    ----------
    landmarks : np.ndarray
        (478, 2) (or (468, 2)) mediapipe face mesh in crop px.
    size : int
        Crop side S.
    valid : np.ndarray
        (S, S) bool, crop pixels that come from the photo.
    foreground : np.ndarray, optional
        (S, S) bool person mask (selfie segmentation); without it ``foreground`` is the face oval grown by a
        quarter of its width and is marked approximate.

    Returns
    -------
    masks : dict[str, np.ndarray]
        (S, S) bool for each of :data:`MASK_KEYS`. ``face`` is the face oval (forehead to chin, no ears or
        neck); ``skin`` is ``face`` minus brows, eyes, nose, lips and mouth; ``lips`` excludes the inner mouth;
        ``background`` is ``valid`` minus ``foreground`` minus ``face``.
    approximate : frozenset[str]
        ``{"foreground", "background"}`` when no segmentation was given, else empty.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc  # noqa: PLC0415 - optional, slow

    lm = np.asarray(landmarks, dtype=np.float64)
    face = _fill(_loop_polygons(lm, fmc.FACEMESH_FACE_OVAL)[:1], size)
    eyes = _fill(_loop_polygons(lm, fmc.FACEMESH_LEFT_EYE)[:1] + _loop_polygons(lm, fmc.FACEMESH_RIGHT_EYE)[:1],
                 size)
    brows = _fill([_band_polygon(lm, fmc.FACEMESH_LEFT_EYEBROW), _band_polygon(lm, fmc.FACEMESH_RIGHT_EYEBROW)],
                  size)
    lip_loops = _loop_polygons(lm, fmc.FACEMESH_LIPS)
    outer_lips = _fill(lip_loops[:1], size)
    mouth = _fill(lip_loops[1:2], size)
    nose_ids = sorted({i for edge in fmc.FACEMESH_NOSE for i in edge})
    nose = _fill([cv2.convexHull(lm[nose_ids].astype(np.float32))[:, 0].astype(np.float64)], size) & ~eyes & ~brows
    lips = outer_lips & ~mouth
    masks = {"face": face, "brows": brows & ~eyes, "nose": nose, "lips": lips, "eyes": eyes, "mouth": mouth}
    masks = {k: m & valid for k, m in masks.items()}
    masks["skin"] = masks["face"] & ~(masks["brows"] | masks["eyes"] | masks["nose"] | masks["lips"] |
                                      masks["mouth"])
    approximate: frozenset[str] = frozenset()
    if foreground is None:
        width = float(np.ptp(lm[:, 0]))
        foreground = _grow(face, 0.25 * width)
        approximate = frozenset({"foreground", "background"})
    masks["foreground"] = (foreground | masks["face"]) & valid
    masks["background"] = valid & ~masks["foreground"]
    masks["valid"] = valid.copy()
    return masks, approximate


def _grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of ``mask`` (exact distance transform, any radius)."""
    if not mask.any():
        return mask.copy()
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= radius


def _rough(face: np.ndarray, valid: np.ndarray, margin: float) -> dict[str, np.ndarray]:
    """Masks when only a face region is known: parts empty, skin = face, background beyond a margin."""
    face = face & valid
    empty = np.zeros_like(face)
    masks = {part: empty.copy() for part in _PARTS}
    masks["face"] = face
    masks["skin"] = face.copy()
    masks["foreground"] = _grow(face, margin) & valid
    masks["background"] = valid & ~masks["foreground"]
    masks["valid"] = valid.copy()
    return masks


def masks_from_box(box: tuple[float, float, float, float], size: int,
                   valid: np.ndarray) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Rough masks from a face box alone (fallback detector, no landmarks).

    ``face`` is the ellipse inscribed in the box, stretched 30 % upwards to take in the forehead; the parts
    (brows, nose, lips, eyes, mouth) are empty; ``foreground`` is the face grown by a quarter of the box width.

    Parameters
    ----------
    box : tuple
        (x0, y0, w, h) of the detector box in crop px.
    size : int
        Crop side S.
    valid : np.ndarray
        (S, S) bool.

    Returns
    -------
    masks : dict[str, np.ndarray]
        (S, S) bool for each of :data:`MASK_KEYS`.
    approximate : frozenset[str]
        Every key except ``valid``.
    """
    x, y, w, h = box
    centre = np.array([x + w / 2, y + h / 2 - 0.15 * h]) - 0.5
    axes = np.array([w / 2, 0.65 * h])
    canvas = np.zeros((size, size), np.uint8)
    scale = 1 << _SHIFT
    cv2.ellipse(canvas, tuple(int(v) for v in np.round(centre * scale)), tuple(int(v) for v in np.round(axes * scale)),
                0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    masks = _rough(canvas.astype(bool), valid, 0.25 * w)
    return masks, frozenset(MASK_KEYS) - {"valid"}


def masks_from_prediction_mask(mask: np.ndarray,
                               valid: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Rough masks from the network's validity mask, for crops without landmarks.

    ``face`` (= ``skin``) is the largest connected region of ``mask`` with its holes filled; the parts are
    empty; ``foreground`` is the face grown by 5 % of the crop side; ``background`` is the rest of ``valid``.

    Parameters
    ----------
    mask : np.ndarray
        (S, S) bool, :attr:`Prediction.mask`.
    valid : np.ndarray, optional
        (S, S) bool, crop pixels from the photo (``crop.masks["valid"]``); default all.

    Returns
    -------
    masks : dict[str, np.ndarray]
        (S, S) bool for each of :data:`MASK_KEYS`.
    approximate : frozenset[str]
        Every key except ``valid``.
    """
    mask = np.asarray(mask, dtype=bool)
    size = mask.shape[0]
    valid = np.ones_like(mask) if valid is None else np.asarray(valid, dtype=bool)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    face = np.zeros((size, size), np.uint8)
    if contours:
        cv2.drawContours(face, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    else:
        logger.warning("the network's mask is empty; every region mask is empty")
    masks = _rough(face.astype(bool), valid, 0.05 * size)
    return masks, frozenset(MASK_KEYS) - {"valid"}
