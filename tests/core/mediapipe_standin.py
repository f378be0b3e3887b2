"""A stand-in MediaPipe landmark embedding for the synthetic head (test and benchmark fixture, not a core asset).

The synthetic head has no real face, only Gaussian bumps (``_FEATURES`` in core/flame/synthetic.py: eye sockets
at x = +-0.032, y = 0.027; brows at y = 0.047; lips at y = -0.038; nose ridge and tip on the midline). This module
places the 105 MediaPipe face-mesh ids of FLAME's own MediaPipe embedding (brows, eye contours, nose, lips) at
the matching places on the front of that head: each id gets a 2D position (x, y) in metres and is embedded on
the front-most head triangle (eyeballs excluded) above that position. Ids of the subject's left (MediaPipe's
"LEFT_EYE" ids 263, 362, 386, 374, lip corner 291, ...) sit at +x, FLAME's subject-left side; every id's mirror
id sits at the mirrored position, so the embedding is left/right symmetric to the mesh's own symmetry.
"""

from __future__ import annotations

import numpy as np

from core.flame import LandmarkEmbedding
from core.flame.data import FlameData

_EYE_X, _EYE_Y = 0.032, 0.027
# Subject-left ids with their (x, y); the subject-right partner of each is placed at (-x, y).
_LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)  # outer corner -> inner corner, upper lid
_LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)  # outer -> inner, lower lid
_LEFT_BROW_UPPER = (300, 293, 334, 296, 336)  # outer -> inner
_LEFT_BROW_LOWER = (276, 283, 282, 295, 285)
_PAIRS = {  # subject-left id -> subject-right id (MediaPipe's mirror partner)
    263: 33, 466: 246, 388: 161, 387: 160, 386: 159, 385: 158, 384: 157, 398: 173, 362: 133,
    249: 7, 390: 163, 373: 144, 374: 145, 380: 153, 381: 154, 382: 155,
    300: 70, 293: 63, 334: 105, 296: 66, 336: 107, 276: 46, 283: 53, 282: 52, 295: 65, 285: 55,
    358: 129, 327: 98, 326: 97,
    291: 61, 375: 146, 321: 91, 405: 181, 314: 84, 409: 185, 270: 40, 269: 39, 267: 37,
    308: 78, 324: 95, 318: 88, 402: 178, 317: 87, 415: 191, 310: 80, 311: 81, 312: 82,
}


def _left_positions() -> dict[int, tuple[float, float]]:
    pos: dict[int, tuple[float, float]] = {}
    half_width, half_height = 0.0135, 0.006
    for ids, sign in ((_LEFT_EYE_UPPER, 1.0), (_LEFT_EYE_LOWER, -1.0)):
        n = len(ids) if sign > 0 else len(ids) + 2
        offset = 0 if sign > 0 else 1
        for k, i in enumerate(ids):
            t = np.pi * (k + offset) / (n - 1)  # 0 at the outer corner, pi at the inner corner
            pos[i] = (_EYE_X + half_width * np.cos(t), _EYE_Y + sign * half_height * np.sin(t))
    for ids, y in ((_LEFT_BROW_UPPER, 0.050), (_LEFT_BROW_LOWER, 0.045)):
        for k, i in enumerate(ids):
            pos[i] = (0.050 - 0.0095 * k, y)
    pos.update({358: (0.016, -0.013), 327: (0.011, -0.018), 326: (0.005, -0.021)})
    # Lips: outer contour from the corner over the upper and lower lip, inner contour just inside it.
    pos.update({291: (0.025, -0.038), 409: (0.021, -0.035), 270: (0.017, -0.033), 269: (0.012, -0.032),
                267: (0.006, -0.0315), 375: (0.022, -0.041), 321: (0.018, -0.043), 405: (0.013, -0.0445),
                314: (0.007, -0.0455)})
    pos.update({308: (0.022, -0.038), 415: (0.018, -0.0365), 310: (0.013, -0.036), 311: (0.009, -0.0355),
                312: (0.004, -0.0355), 324: (0.018, -0.0395), 318: (0.013, -0.040), 402: (0.009, -0.0405),
                317: (0.004, -0.0405)})
    return pos


_MIDLINE = {168: (0.0, 0.030), 6: (0.0, 0.020), 197: (0.0, 0.010), 195: (0.0, 0.002), 5: (0.0, -0.005),
            4: (0.0, -0.011), 2: (0.0, -0.021), 0: (0.0, -0.031), 13: (0.0, -0.0355), 14: (0.0, -0.0405),
            17: (0.0, -0.046)}


def standin_positions() -> dict[int, tuple[float, float]]:
    """MediaPipe id -> (x, y) in metres on the synthetic head's front (105 ids)."""
    pos = dict(_MIDLINE)
    for left, (x, y) in _left_positions().items():
        pos[left] = (x, y)
        pos[_PAIRS[left]] = (-x, y)
    return pos


def standin_embedding(data: FlameData) -> LandmarkEmbedding:
    """Embed :func:`standin_positions` on the front-most head triangles of ``data`` (any synthetic seed)."""
    head = data.weights[:, 3:].sum(1) < 0.5
    faces = data.faces[head[data.faces].all(1)]
    face_ids = np.flatnonzero(head[data.faces].all(1))
    tri = data.v_template[faces]  # (F, 3, 3)
    ids, face_idx, bary = [], [], []
    for mp_id, (x, y) in sorted(standin_positions().items()):
        a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
        det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
        safe = np.where(np.abs(det) > 1e-15, det, 1.0)
        u = ((b[:, 0] - x) * (c[:, 1] - y) - (c[:, 0] - x) * (b[:, 1] - y)) / safe
        v = ((c[:, 0] - x) * (a[:, 1] - y) - (a[:, 0] - x) * (c[:, 1] - y)) / safe
        w = 1.0 - u - v
        inside = (np.abs(det) > 1e-15) & (u >= -1e-9) & (v >= -1e-9) & (w >= -1e-9)
        weights = np.stack((u, v, w), 1)
        depth = (tri[:, :, 2] * weights).sum(1)
        best = np.flatnonzero(inside)[np.argmax(depth[inside])]
        ids.append(mp_id)
        face_idx.append(face_ids[best])
        bary.append(weights[best])
    return LandmarkEmbedding(
        face_idx=np.array(face_idx, dtype=np.int64),
        bary=np.array(bary, dtype=np.float64),
        landmark_indices=np.array(ids, dtype=np.int64),
        kind="mediapipe",
        source="synthetic-head stand-in (tests/core/mediapipe_standin.py)",
    )
