"""A synthetic FLAME-format head: the test and demo stand-in for the licence-gated FLAME model.

It is generated from a seed in well under a second and has FLAME's layout: 5 joints (root, neck, jaw, left eye,
right eye), identity then expression blendshapes, 36 pose correctives, skinning weights, a joint regressor, eyelid
blendshapes and a UV layout with seams. Full size has FLAME's counts (5023 vertices, 9976 triangles).

Geometry (metres, +y up, face towards +z, +x the subject's left): a head surface that is a topological disk whose
only boundary is the neck opening, plus two closed eyeballs. The head is a stack of horizontal vertex rings below
a top pole; each ring is mirror-symmetric about x = 0, so the left/right mirror index is exact. The UV layout is a
latitude/longitude unwrap of the head with the seam at the back (face front at u = 0.5, +x side at u > 0.5) and one
azimuthal island per eyeball, all mirror-symmetric about u = 0.5 and without overlaps. The blendshapes are smooth
random fields; the identity ones nearly mirror-symmetric, like real heads, the expression ones not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import N_JOINTS, FlameData
from .io import EYELID_FILES, write_flame_pickle
from .uv import UVTemplate, write_obj

_PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
#: Weight of each identity component's left-right antisymmetric part relative to its symmetric part. Real faces are
#: close to symmetric (3D scans of healthy faces: left-right differences of about 1 mm, 3-4 mm going unnoticed);
#: at 0.08 heads drawn with 0.7-sigma identities have a median RMS mirror offset of about 1 mm (8.7 mm with
#: fully random fields, against which FLAME fitting's symmetry prior pulled).
_IDENTITY_ASYMMETRY = 0.08


@dataclass(frozen=True)
class _Plan:
    head_ring: int  # vertices per head ring (even, so a vertex sits on the seam)
    head_rings: int
    neck_ring: int  # vertices per neck ring = length of the boundary loop (even)
    neck_rings: int
    eye_segments: int
    eye_rings: int
    n_shape: int
    n_expr: int
    n_features: int  # random Fourier features behind the smooth blendshapes


# full: 1 + 42*96 + 8*60 = 4513 head vertices, 2 * (23*11 + 2) = 510 eyeball vertices -> 5023;
# triangles 2*4513 - 2 - 60 + 2 * 2*23*11 = 9976.
_PLANS = {
    "small": _Plan(24, 10, 12, 4, 8, 5, 20, 10, 48),
    "full": _Plan(96, 42, 60, 8, 23, 11, 300, 100, 128),
}

# Head shape: ellipsoid (centre y, half height, half width, front depth, back depth, lowest polar angle).
_HEAD_YC, _HEAD_AY, _HEAD_AX, _HEAD_ZF, _HEAD_ZB, _HEAD_ALPHA = 0.015, 0.125, 0.078, 0.098, 0.105, 0.74 * np.pi
# The stand-in has no ears; its sides bulge instead, so that the head is about as wide as FLAME's with ears (about
# 17.5 cm here, 15.6 cm without the bulge) and as wide against its face as a real head in a photo's face box. The
# bulge grows with sin(azimuth)^4, so the face (within about 40 degrees of the front) keeps its shape.
_SIDE_BULGE = 0.12
_NECK_BOTTOM, _NECK_RX, _NECK_ZF, _NECK_ZB, _NECK_ZC = -0.17, 0.052, 0.056, 0.058, -0.02
# Facial features: (x, y, sigma_x, sigma_y, forward offset) Gaussians, mirrored when x != 0.
_FEATURES = (
    (0.0, 0.0, 0.010, 0.022, 0.024),  # nose ridge
    (0.0, -0.012, 0.008, 0.008, 0.008),  # nose tip
    (0.032, 0.027, 0.014, 0.010, -0.012),  # eye sockets
    (0.030, 0.047, 0.020, 0.007, 0.005),  # brows
    (0.045, -0.010, 0.015, 0.020, 0.006),  # cheeks
    (0.0, -0.038, 0.018, 0.008, 0.007),  # lips
    (0.0, -0.072, 0.016, 0.012, 0.014),  # chin
)
_EYE_X, _EYE_Y, _EYE_RADIUS, _EYE_PROTRUSION = 0.032, 0.027, 0.0125, 0.002
# UV layout: head rectangle and eyeball islands (centre v, radius).
_UV_HALF_WIDTH, _UV_TOP, _UV_BOTTOM = 0.48, 0.98, 0.24
_UV_EYE_U, _UV_EYE_V, _UV_EYE_RADIUS = 0.2, 0.11, 0.09


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _face_offset(x: np.ndarray, y: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Forward (z) offset of the facial features, weighted by how much a point faces forward."""
    total = np.zeros_like(x)
    for fx, fy, sx, sy, amp in _FEATURES:
        total += amp * _gauss(x, y, fx, fy, sx, sy)
        if fx != 0.0:
            total += amp * _gauss(x, y, -fx, fy, sx, sy)
    return total * front


def _ring(n: int, y: float, rx: float, zf: float, zb: float, zc: float) -> np.ndarray:
    """(n, 3) ring at azimuths -pi + 2 pi k / n (k = 0 on the back seam), with the face offset applied."""
    phi = -np.pi + 2.0 * np.pi * np.arange(n) / n
    c, s = np.cos(phi), np.sin(phi)
    depth = zf * 0.5 * (1 + c) + zb * 0.5 * (1 - c)
    x = rx * s * (1.0 + _SIDE_BULGE * s**4)  # wider at the sides (where FLAME has ears), not at the face
    yy = np.full(n, y)
    z = zc + depth * c + _face_offset(x, yy, np.clip(c, 0.0, None) ** 2)
    return np.stack((x, yy, z), axis=1)


def _zip(upper: list[tuple[int, int, float]], lower: list[tuple[int, int, float]]) -> list[tuple]:
    """Triangulate the band between two open polylines of (vertex, uv, u) sorted by u; CCW in UV."""
    tris = []
    i = j = 0
    while i < len(upper) - 1 or j < len(lower) - 1:
        advance_upper = j == len(lower) - 1 or (i < len(upper) - 1 and upper[i + 1][2] <= lower[j + 1][2])
        if advance_upper:
            tris.append((upper[i], lower[j], upper[i + 1]))
            i += 1
        else:
            tris.append((upper[i], lower[j], lower[j + 1]))
            j += 1
    return tris


def _head(plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Head surface: vertices (Vh,3), uv (Th,2), faces (Fh,3), uv_faces (Fh,3), first vertex of each ring."""
    rings = []
    for i in range(1, plan.head_rings + 1):
        a = _HEAD_ALPHA * i / plan.head_rings
        sa = np.sin(a)
        rings.append(
            _ring(plan.head_ring, _HEAD_YC + _HEAD_AY * np.cos(a), _HEAD_AX * sa, _HEAD_ZF * sa, _HEAD_ZB * sa, 0.0)
        )
    a = _HEAD_ALPHA
    y0 = _HEAD_YC + _HEAD_AY * np.cos(a)
    rx0, zf0, zb0 = _HEAD_AX * np.sin(a), _HEAD_ZF * np.sin(a), _HEAD_ZB * np.sin(a)
    for n in range(1, plan.neck_rings + 1):
        s = n / plan.neck_rings
        w = 3 * min(1.0, 2 * s) ** 2 - 2 * min(1.0, 2 * s) ** 3
        rings.append(
            _ring(
                plan.neck_ring,
                y0 + s * (_NECK_BOTTOM - y0),
                rx0 + w * (_NECK_RX - rx0),
                zf0 + w * (_NECK_ZF - zf0),
                zb0 + w * (_NECK_ZB - zb0),
                w * _NECK_ZC,
            )
        )
    top = np.array([[0.0, _HEAD_YC + _HEAD_AY, 0.0]])
    verts = np.concatenate([top] + rings)
    uv: list[tuple[float, float]] = []
    polylines = []
    start = 1
    starts = []
    n_rings = len(rings)
    for r, ring in enumerate(rings, 1):
        n = len(ring)
        v = _UV_TOP - (_UV_TOP - _UV_BOTTOM) * r / n_rings
        line = []
        for k in range(n + 1):
            u = 0.5 - _UV_HALF_WIDTH + 2 * _UV_HALF_WIDTH * k / n
            line.append((start + k % n, len(uv), u))
            uv.append((u, v))
        polylines.append(line)
        starts.append(start)
        start += n
    tris = []
    first = polylines[0]
    for k in range(len(first) - 1):
        u_mid = 0.5 * (first[k][2] + first[k + 1][2])
        pole = (0, len(uv), u_mid)
        uv.append((u_mid, _UV_TOP))
        tris.append((pole, first[k], first[k + 1]))
    for upper, lower in zip(polylines[:-1], polylines[1:]):
        tris += _zip(upper, lower)
    faces = np.array([[c[0] for c in t] for t in tris], dtype=np.int64)
    uv_faces = np.array([[c[1] for c in t] for t in tris], dtype=np.int64)
    return verts, np.array(uv), faces, uv_faces, starts


def _eyeball(plan: _Plan, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left eyeball (pupil towards +z) with an azimuthal UV island; vertex and uv indices start at 0."""
    s, r = plan.eye_segments, plan.eye_rings
    beta = np.pi * np.arange(1, r + 1) / (r + 1)
    psi = 2 * np.pi * np.arange(s) / s
    b, p = np.meshgrid(beta, psi, indexing="ij")
    dirs = np.stack((np.sin(b) * np.cos(p), np.sin(b) * np.sin(p), np.cos(b)), axis=-1).reshape(-1, 3)
    verts = centre + _EYE_RADIUS * np.concatenate(([[0.0, 0.0, 1.0]], dirs, [[0.0, 0.0, -1.0]]))
    centre_uv = np.array([0.5 + _UV_EYE_U, _UV_EYE_V])
    rho = _UV_EYE_RADIUS * (b / np.pi)
    ring_uv = centre_uv + np.stack((rho * np.cos(p), rho * np.sin(p)), axis=-1).reshape(-1, 2)
    mid = psi + np.pi / s
    back_uv = centre_uv + _UV_EYE_RADIUS * np.stack((np.cos(mid), np.sin(mid)), axis=-1)
    uv = np.concatenate((centre_uv[None], ring_uv, back_uv))
    ring = lambda j, k: 1 + j * s + k % s  # noqa: E731
    faces, uv_faces = [], []
    for k in range(s):
        faces.append((0, ring(0, k), ring(0, k + 1)))
        uv_faces.append(faces[-1])
        for j in range(r - 1):
            quad = [(ring(j, k), ring(j + 1, k), ring(j + 1, k + 1)), (ring(j, k), ring(j + 1, k + 1), ring(j, k + 1))]
            faces += quad
            uv_faces += quad
        back = 1 + r * s
        faces.append((ring(r - 1, k), back, ring(r - 1, k + 1)))
        uv_faces.append((ring(r - 1, k), back + k, ring(r - 1, k + 1)))
    return verts, uv, np.array(faces, dtype=np.int64), np.array(uv_faces, dtype=np.int64)


def _fourier_features(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n) smooth random cosine features with wavelengths between 8 and 40 cm."""
    direction = rng.normal(size=(3, n))
    direction /= np.linalg.norm(direction, axis=0)
    omega = direction * (2 * np.pi / rng.uniform(0.08, 0.4, size=n))
    return np.cos(points @ omega + rng.uniform(0, 2 * np.pi, size=n))


def _smooth_basis(
    features: np.ndarray, mask: np.ndarray, rms: np.ndarray, rng: np.random.Generator, measure: np.ndarray,
    mirror: np.ndarray | None = None, asymmetry: float = 1.0,
) -> np.ndarray:
    """(N, 3, K) masked random combinations of the features, each with the given RMS over ``measure`` rows.

    With ``mirror`` (the vertex index reflected through x = 0), each field's part that is antisymmetric under that
    reflection is weighted by ``asymmetry`` relative to its symmetric part before the RMS is set."""
    k = len(rms)
    coeff = rng.normal(size=(features.shape[1], 3 * k))
    basis = (features @ coeff).reshape(-1, 3, k) * mask[:, None, None]
    if mirror is not None:
        reflected = basis[mirror] * np.array([-1.0, 1.0, 1.0])[None, :, None]
        basis = 0.5 * (basis + reflected) + 0.5 * asymmetry * (basis - reflected)
    scale = np.sqrt((basis[measure] ** 2).sum(1).mean(0))
    return basis * (rms / np.where(scale > 0, scale, 1.0))


def synthetic_flame(size: str = "small", seed: int = 0) -> tuple[FlameData, UVTemplate]:
    """Generate the synthetic head in memory.

    Parameters
    ----------
    size : "small" (373 vertices, 20 shape / 10 expression components, for unit tests) or "full" (5023
        vertices, 9976 triangles, 300 shape / 100 expression components, like FLAME).
    seed : seed of the blendshapes (the template geometry and UV layout do not depend on it).

    Returns
    -------
    (FlameData with release "synthetic" and eyelid blendshapes, matching UVTemplate).
    """
    if size not in _PLANS:
        raise ValueError(f"Unknown synthetic head size '{size}'; use one of {sorted(_PLANS)}.")
    plan = _PLANS[size]
    rng = np.random.default_rng(seed)
    head_v, head_uv, head_f, head_tf, starts = _head(plan)

    # Eyeballs sit in the sockets with their front slightly in front of the skin.
    front = head_v[head_v[:, 2] > 0]
    near = np.argmin((front[:, 0] - _EYE_X) ** 2 + (front[:, 1] - _EYE_Y) ** 2)
    left_centre = np.array([_EYE_X, _EYE_Y, front[near, 2] + _EYE_PROTRUSION - _EYE_RADIUS])
    eye_v, eye_uv, eye_f, eye_tf = _eyeball(plan, left_centre)
    nh, ne = len(head_v), len(eye_v)
    flip = np.array([-1.0, 1.0, 1.0])
    verts = np.concatenate((head_v, eye_v, eye_v * flip))
    uv = np.concatenate((head_uv, eye_uv, eye_uv * [-1.0, 1.0] + [1.0, 0.0]))
    nth, nte = len(head_uv), len(eye_uv)
    faces = np.concatenate((head_f, eye_f + nh, eye_f[:, ::-1] + nh + ne))
    uv_faces = np.concatenate((head_tf, eye_tf + nth, eye_tf[:, ::-1] + nth + nte))
    n_v = len(verts)
    head = np.arange(n_v) < nh
    eye_l = (np.arange(n_v) >= nh) & (np.arange(n_v) < nh + ne)
    eye_r = np.arange(n_v) >= nh + ne
    x, y, z = verts.T

    # Joint regressor: root = bottom neck ring, neck = middle neck ring, jaw = head ring nearest y = -0.03,
    # eyes = eyeball vertices; each a uniform average, so every joint lies on the symmetry plane or eye centre.
    regressor = np.zeros((N_JOINTS, n_v))
    def ring_of(r: int) -> np.ndarray:
        return np.arange(starts[r], starts[r] + (plan.neck_ring if r >= plan.head_rings else plan.head_ring))

    head_ring_y = np.array([verts[starts[r], 1] for r in range(plan.head_rings)])
    for j, idx in enumerate(
        (
            ring_of(len(starts) - 1),
            ring_of(plan.head_rings + plan.neck_rings // 2),
            ring_of(int(np.argmin(np.abs(head_ring_y + 0.03)))),
            np.flatnonzero(eye_l),
            np.flatnonzero(eye_r),
        )
    ):
        regressor[j, idx] = 1.0 / len(idx)
    joints = regressor @ verts

    # Skinning weights: lower neck to the root, lower face to the jaw, the rest of the head to the neck.
    w_root = _sigmoid((-0.14 - y) / 0.012)
    jaw = _sigmoid((-0.04 - y) / 0.006) * _sigmoid((z - joints[2, 2] - 0.02) / 0.01) * _sigmoid((y + 0.10) / 0.01)
    weights = np.zeros((n_v, N_JOINTS))
    weights[head, 0] = w_root[head]
    weights[head, 2] = ((1 - w_root) * jaw)[head]
    weights[head, 1] = 1.0 - weights[head, 0] - weights[head, 2]
    weights[eye_l, 3] = 1.0
    weights[eye_r, 4] = 1.0

    # Blendshapes from smooth random fields; eyeballs follow the field at their centre (they move rigidly).
    anchors = verts.copy()
    anchors[eye_l] = joints[3]
    anchors[eye_r] = joints[4]
    features = _fourier_features(anchors, plan.n_features, rng)
    ones = np.ones(n_v)
    template = UVTemplate.from_arrays(verts, faces, uv, uv_faces, source=f"synthetic UV template ({size})")
    shapedirs = _smooth_basis(
        features, ones, 0.006 * np.arange(1, plan.n_shape + 1) ** -0.7, rng, head, template.mirror_index,
        _IDENTITY_ASYMMETRY,
    )
    frontness = np.clip(z / 0.1, 0.0, 1.0) ** 2
    expr_mask = frontness * np.maximum.reduce(
        [
            _gauss(x, y, 0.0, -0.045, 0.03, 0.03),
            _gauss(x, y, _EYE_X, _EYE_Y, 0.022, 0.022),
            _gauss(x, y, -_EYE_X, _EYE_Y, 0.022, 0.022),
            _gauss(x, y, 0.0, 0.05, 0.045, 0.02),
        ]
    ) * head
    active = expr_mask > 0.3
    exprdirs = _smooth_basis(features, expr_mask, 0.004 * np.arange(1, plan.n_expr + 1) ** -0.5, rng, active)
    posedirs = np.zeros((n_v, 3, 36))
    neck_mask = np.exp(-(((y + 0.1) / 0.04) ** 2)) * head
    posedirs[..., :9] = _smooth_basis(features, neck_mask, np.full(9, 0.002), rng, head)
    posedirs[..., 9:18] = _smooth_basis(features, weights[:, 2], np.full(9, 0.002), rng, head)

    # Eyelids: the skin above each eye moves down (and a little forward) when the coefficient is 1.
    eyelids = np.zeros((2, n_v, 3))
    for side, cx in enumerate((_EYE_X, -_EYE_X)):
        lid = _gauss(x, y, cx, _EYE_Y + 0.008, 0.011, 0.007) * head * (z > joints[3, 2])
        eyelids[side] = lid[:, None] * np.array([0.0, -0.011, 0.002])

    data = FlameData(
        v_template=verts,
        faces=faces,
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=posedirs,
        J_regressor=regressor,
        weights=weights,
        parents=_PARENTS.copy(),
        eyelids=eyelids,
        release="synthetic",
        source=f"synthetic head ({size}, seed {seed})",
    )
    return data, template


def write_synthetic_flame(out_dir: str | Path, size: str = "small", seed: int = 0) -> dict[str, Path]:
    """Write the synthetic head as FLAME-layout files.

    Parameters
    ----------
    out_dir : folder (created if needed).
    size, seed : as in :func:`synthetic_flame`.

    Returns
    -------
    Paths by role: ``"plain"`` (numpy-only pickle, dense J_regressor), ``"chumpy"`` (FLAME 2020-style pickle
    referencing ``chumpy.ch.Ch`` and ``scipy.sparse._csc.csc_matrix``, loadable without either), ``"obj"`` (UV
    template like ``head_template.obj``), ``"eyelid_left"`` and ``"eyelid_right"`` ((V, 3) ``.npy`` files).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, template = synthetic_flame(size, seed)
    stem = f"synthetic_flame_{size}_{seed}"
    paths = {
        "plain": write_flame_pickle(data, out / f"{stem}.pkl", style="plain"),
        "chumpy": write_flame_pickle(data, out / f"{stem}_chumpy.pkl", style="chumpy"),
        "obj": write_obj(out / f"synthetic_head_template_{size}.obj", template),
        "eyelid_left": out / EYELID_FILES[0],  # beside the pickles, where load_flame looks for them
        "eyelid_right": out / EYELID_FILES[1],
    }
    np.save(paths["eyelid_left"], data.eyelids[0])
    np.save(paths["eyelid_right"], data.eyelids[1])
    return paths
