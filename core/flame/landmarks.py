"""Facial landmarks on FLAME: which points the fit uses and how they sit on the mesh.

Detected landmarks are MediaPipe's 478-point face mesh with irises on the 512² crop (``FaceCrop.landmarks``). The
reference's landmark terms speak iBUG-68 ids (eyes 36-47, the lid pairs, mouth 48-67, contour 0-16) and WFLW 96 /
97 for the irises. Here each iBUG point is one MediaPipe point or the midpoint of two (:data:`IBUG68`, the usual
correspondence), and the irises are MediaPipe's 468 (the subject's right) and 473 (left). So the eye terms use the
12 MediaPipe points of iBUG 36-47 (33, 160, 158, 133, 153, 144 and 362, 385, 387, 263, 373, 380), keeping the
reference's normalisation and weights; the network-free mode adds every other MediaPipe point (``"dense"``).

An embedding (:class:`.io.LandmarkEmbedding`) places each landmark on a triangle with barycentric coordinates;
:mod:`core.landmarks` finds or derives one for a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .io import LandmarkEmbedding

__all__ = ["IBUG68", "IRIS", "GROUPS", "LID_PAIRS", "MOUTH_PAIRS", "LandmarkPoints", "group_points", "pair_points",
           "landmark_uv"]

#: MediaPipe face-mesh ids of each iBUG-68 landmark (index = iBUG id); two ids mean their midpoint.
IBUG68: tuple[tuple[int, ...], ...] = (
    # contour 0-16 (the subject's right to left)
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-21 (subject's right), 22-26 (left)
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-41 (subject's right: outer corner, upper lid, upper lid, inner corner, lower, lower), 42-47 (left)
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59, inner lips 60-67
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
#: MediaPipe iris centres: the subject's right eye, then the left.
IRIS = (468, 473)
#: Upper and lower lid points the reference's closure term compares (iBUG ids).
LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
#: Upper and lower inner-lip points of the mouth-closure term (iBUG ids).
MOUTH_PAIRS = ((61, 67), (62, 66), (63, 65))
#: MediaPipe's face-oval ids (the silhouette ring of the face mesh): view-dependent, so kept out of ``dense``.
_FACE_OVAL = frozenset((
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
    150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
))
#: Landmark groups by iBUG id (``static`` is the reference's 51 non-contour points, which the camera stage uses),
#: and ``dense``: every MediaPipe face point except the face oval and the irises (the network-free mode).
GROUPS: dict[str, tuple[int, ...]] = {
    "eye": tuple(range(36, 48)),
    "mouth": tuple(range(48, 68)),
    "contour": tuple(range(0, 17)),
    "static": tuple(range(17, 68)),
}


@dataclass(frozen=True)
class LandmarkPoints:
    """Landmarks of one group as points on the mesh, with their detected positions.

    Attributes
    ----------
    ids : (L,) the landmark ids (iBUG ids, or MediaPipe ids for the ``dense`` and ``iris`` groups)
    corners : (L, K) int64 vertex indices; weights : (L, K) float64 barycentric weights (rows sum to 1). A point
        averaging several embedding points has K = 3 x their number (unused columns have weight 0)
    targets : (L, 2) float64 detected positions in crop pixels (NaN where not detected)
    """

    ids: np.ndarray
    corners: np.ndarray
    weights: np.ndarray
    targets: np.ndarray

    def positions(self, vertices: np.ndarray) -> np.ndarray:
        """(L, 3) the points on a mesh with these vertices (V, 3)."""
        return np.einsum("lk,lkc->lc", self.weights, np.asarray(vertices)[self.corners])


def _rows(embedding: LandmarkEmbedding, faces: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Embedding point -> (corner vertex ids (3,), barycentrics (3,)), keyed by MediaPipe id or iBUG id."""
    return {
        int(k): (faces[int(f)], b) for k, f, b in zip(embedding.landmark_indices, embedding.face_idx, embedding.bary)
    }


def _point(rows, mp_ids: tuple[int, ...], ibug: int | None, kind: str):
    """Corner ids and weights of one landmark (an average of embedding points), or None when not embedded."""
    keys = mp_ids if kind == "mediapipe" else ((ibug,) if ibug is not None else ())
    if not keys or any(k not in rows for k in keys):
        return None
    corners = np.concatenate([rows[k][0] for k in keys])
    weights = np.concatenate([rows[k][1] for k in keys]) / len(keys)
    return corners, weights


def _stack(ids, points, targets) -> LandmarkPoints | None:
    if not points:
        return None
    k = max(len(c) for c, _ in points)
    corners = np.zeros((len(points), k), dtype=np.int64)
    weights = np.zeros((len(points), k), dtype=np.float64)
    for i, (c, w) in enumerate(points):
        corners[i, : len(c)] = c
        weights[i, : len(w)] = w
    return LandmarkPoints(np.asarray(ids, dtype=np.int64), corners, weights, np.asarray(targets, dtype=np.float64))


def _target(detected: np.ndarray | None, mp_ids: tuple[int, ...]) -> np.ndarray:
    if detected is None or max(mp_ids) >= len(detected):
        return np.full(2, np.nan)
    return np.asarray(detected, dtype=np.float64)[list(mp_ids)].mean(0)


def group_points(
    group: str, embedding: LandmarkEmbedding, faces: np.ndarray, detected: np.ndarray | None
) -> LandmarkPoints | None:
    """The landmarks of ``group`` (a key of :data:`GROUPS`, ``"dense"`` or ``"iris"``) that the embedding places.

    Parameters
    ----------
    group : group name
    embedding : where the landmarks sit on the mesh
    faces : (F, 3) the model's triangles
    detected : (478, 2) MediaPipe landmarks in crop pixels, or None (targets NaN)

    Returns
    -------
    LandmarkPoints, or None when the embedding places none of the group's points.
    """
    rows = _rows(embedding, np.asarray(faces))
    ids, points, targets = [], [], []
    if group in GROUPS:
        specs = [(i, IBUG68[i], i) for i in GROUPS[group]]
    elif group == "iris":
        specs = [(m, (m,), None) for m in IRIS]
    elif group == "dense":
        used = {m for ids_ in IBUG68 for m in ids_}
        specs = [(m, (m,), None) for m in range(468) if m not in _FACE_OVAL and m not in used]
    else:
        raise ValueError(f"Unknown landmark group {group!r}.")
    for key, mp_ids, ibug in specs:
        found = _point(rows, mp_ids, ibug, embedding.kind)
        if found is not None:
            ids.append(key)
            points.append(found)
            targets.append(_target(detected, mp_ids))
    return _stack(ids, points, targets)


def pair_points(
    pairs: tuple[tuple[int, int], ...], embedding: LandmarkEmbedding, faces: np.ndarray, detected: np.ndarray | None
) -> tuple[LandmarkPoints, LandmarkPoints] | None:
    """Upper and lower points of closure pairs (iBUG ids), both embedded; None when no pair is."""
    rows = _rows(embedding, np.asarray(faces))
    upper, lower = [], []
    for a, b in pairs:
        pa, pb = _point(rows, IBUG68[a], a, embedding.kind), _point(rows, IBUG68[b], b, embedding.kind)
        if pa is not None and pb is not None:
            upper.append((a, pa, _target(detected, IBUG68[a])))
            lower.append((b, pb, _target(detected, IBUG68[b])))
    if not upper:
        return None
    return tuple(_stack([u[0] for u in side], [u[1] for u in side], [u[2] for u in side]) for side in (upper, lower))


def landmark_uv(points: LandmarkPoints, uv_template) -> np.ndarray:
    """(L, 2) the UV (network convention ``(u, 1 - v)``) of each landmark point, from the template's per-vertex UVs."""
    return np.einsum("lk,lkc->lc", points.weights, np.asarray(uv_template.vertex_uv)[points.corners])
