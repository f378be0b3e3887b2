"""Synthetic FLAME-format heads and fits for the add-on tests and the scene benchmark.

The head is a closed latitude-longitude ellipsoid (real triangles, a real UV map with a seam) carrying
smooth random identity, expression, pose-corrective and eyelid blendshapes, a joint regressor and skin weights
that favour the neck, jaw and eye regions. The fit is a real ``core.fit.result.FitResult`` whose posed vertices
come from ``core.flame.FlameModel``.
"""

from __future__ import annotations

import numpy as np
import torch

from core.flame.data import FlameData
from core.flame.model import FlameModel, FlameParams
from core.flame.uv import UVTemplate
from core.fit.result import FitResult

# Joint centres in FLAME's frame (metres): root, neck, jaw, left eye (+x), right eye.
JOINT_CENTRES = np.array(
    [[0.0, -0.06, -0.01], [0.0, -0.03, -0.01], [0.0, -0.02, 0.03], [0.032, 0.03, 0.06], [-0.032, 0.03, 0.06]]
)
FULL_SIZE = (57, 88)  # rings, segments: 4930 vertices, 9856 triangles, close to FLAME's 5023 / 9976


def _sphere(rings: int, segments: int):
    """Vertices, triangles and per-corner UVs of a lat-long ellipsoid about 19 x 24 x 21 cm."""
    theta = np.linspace(0.0, np.pi, rings + 2)[1:-1]  # polar angle, poles excluded
    phi = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.sin(p) * 0.095, np.cos(t) * 0.12, np.sin(t) * np.cos(p) * 0.105], -1)
    verts = np.concatenate([[[0.0, 0.12, 0.0]], ring.reshape(-1, 3), [[0.0, -0.12, 0.0]]])
    top, bottom = 0, verts.shape[0] - 1

    def vid(r, s):
        return 1 + r * segments + (s % segments)

    faces, corner_uv = [], []

    def uv(r, s):  # r may be -1 (top pole) or rings (bottom pole); s in 0..segments (seam duplicated)
        return (s / segments, 1.0 - (r + 1) / (rings + 1))

    for s in range(segments):
        faces.append((top, vid(0, s), vid(0, s + 1)))
        corner_uv.append((((s + 0.5) / segments, 1.0), uv(0, s), uv(0, s + 1)))
        faces.append((bottom, vid(rings - 1, s + 1), vid(rings - 1, s)))
        corner_uv.append((((s + 0.5) / segments, 0.0), uv(rings - 1, s + 1), uv(rings - 1, s)))
        for r in range(rings - 1):
            a, b, c, d = vid(r, s), vid(r + 1, s), vid(r + 1, s + 1), vid(r, s + 1)
            faces += [(a, b, c), (a, c, d)]
            corner_uv += [(uv(r, s), uv(r + 1, s), uv(r + 1, s + 1)), (uv(r, s), uv(r + 1, s + 1), uv(r, s + 1))]
    return verts, np.array(faces, dtype=np.int64), np.array(corner_uv, dtype=np.float64)


def _smooth_field(rng, verts: np.ndarray, count: int, scale: float) -> np.ndarray:
    """(V, 3, count) smooth random displacement fields of typical size ``scale`` metres."""
    freq = rng.normal(size=(count, 3, 3)) * 25.0
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(count, 3))
    field = np.sin(np.einsum("vk,nck->vcn", verts, freq) + phase.T[None])
    return field * scale


def synthetic_head(size: tuple[int, int] = (10, 16), n_shape: int = 20, n_expr: int = 100, eyelids: bool = True,
                   seed: int = 0) -> tuple[FlameData, UVTemplate]:
    """A FLAME-format head on a (rings, segments) sphere; see the module docstring."""
    rng = np.random.default_rng(seed)
    verts, faces, corner_uv = _sphere(*size)
    n_verts = verts.shape[0]
    dist2 = ((verts[:, None, :] - JOINT_CENTRES[None]) ** 2).sum(-1)  # (V, J)
    regressor = np.exp(-dist2 / 0.002).T
    regressor /= regressor.sum(1, keepdims=True)
    weights = np.exp(-dist2 / 0.003) + rng.uniform(0.0, 0.05, size=dist2.shape)
    weights[:, 1] += 0.5 * (verts[:, 1] > -0.05)
    weights[rng.random(weights.shape) < 0.3] = 0.0  # sparse like FLAME's
    weights[weights.sum(1) == 0.0, 1] = 1.0
    weights /= weights.sum(1, keepdims=True)
    lids = None
    if eyelids:
        lids = np.zeros((2, n_verts, 3))
        for side, centre in enumerate(JOINT_CENTRES[3:]):
            near = np.exp(-((verts - centre) ** 2).sum(-1) / 0.0008)
            lids[side, :, 1] = -0.004 * near
    uv_vertices, uv_faces = np.unique(corner_uv.reshape(-1, 2).round(9), axis=0, return_inverse=True)
    flame = FlameData(
        v_template=verts,
        faces=faces,
        shapedirs=_smooth_field(rng, verts, n_shape, 0.002),
        exprdirs=_smooth_field(rng, verts, n_expr, 0.001),
        posedirs=_smooth_field(rng, verts, 36, 0.003),
        J_regressor=regressor,
        weights=weights,
        parents=np.array([-1, 0, 1, 1, 1]),
        eyelids=lids,
        release="synthetic",
        source="tests/blender/heads.py",
    )
    uv = UVTemplate.from_arrays(verts, faces, uv_vertices, uv_faces.reshape(-1, 3), "tests/blender/heads.py")
    return flame, uv


def random_rotation(rng, max_degrees: float) -> np.ndarray:
    """(3,) axis-angle with a random axis and an angle up to ``max_degrees``."""
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis) * np.radians(max_degrees) * rng.uniform(0.3, 1.0)


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(axis_angle)
    k = axis_angle / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def flame_forward(flame: FlameData, shape, expression, poses, eyelids=None, global_pose=None) -> np.ndarray:
    """Posed vertices (V, 3) from core's FlameModel in float64; ``poses`` = (neck, jaw, eye L, eye R)."""
    model = FlameModel(flame, dtype=torch.float64)

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64))[None]

    params = FlameParams(
        shape=t(shape), expression=t(expression), neck_pose=t(poses[0]), jaw_pose=t(poses[1]),
        eye_pose_left=t(poses[2]), eye_pose_right=t(poses[3]),
        global_pose=None if global_pose is None else t(global_pose),
        eyelids=None if eyelids is None else t(eyelids),
    )
    with torch.no_grad():
        return model(params).vertices[0].numpy()


def random_fit(flame: FlameData, seed: int = 1, max_degrees: float = 30.0, eyelids: bool = False,
               photo_size: tuple[int, int] = (480, 640)) -> FitResult:
    """A FitResult with random parameters (poses up to ``max_degrees``) and a camera that sees the head."""
    rng = np.random.default_rng(seed)
    shape = rng.normal(size=flame.n_shape).astype(np.float32)
    expression = rng.normal(size=flame.n_expr).astype(np.float32)
    lids = (rng.uniform(-0.5, 1.0, size=2) if eyelids else np.zeros(2)).astype(np.float32)
    poses = [random_rotation(rng, max_degrees).astype(np.float32) for _ in range(4)]
    rotation = rodrigues(random_rotation(rng, 20.0))
    translation = np.array([0.01, -0.015, -0.05]) + rng.normal(size=3) * 0.005
    height, width = photo_size
    focal = 3.9
    k_photo = np.array([[focal * 400.0, 0.0, width / 2 + 23.0], [0.0, focal * 400.0, height / 2 - 17.0], [0, 0, 1]])
    posed = flame_forward(flame, shape, expression, poses, lids if eyelids else None)
    return FitResult(
        shape=shape, expression=expression, eyelids=lids,
        neck_pose=poses[0], jaw_pose=poses[1], eye_pose_left=poses[2], eye_pose_right=poses[3],
        head_rotation=rotation.astype(np.float32), head_translation=translation.astype(np.float32),
        focal=focal, principal_point=np.zeros(2, dtype=np.float32),
        K_crop=k_photo.copy(), K_photo=k_photo, photo_size=(height, width),
        vertices_posed=(posed @ rotation.T + translation).astype(np.float32),
        vertices_neutral=(flame.v_template + flame.shapedirs @ shape).astype(np.float32),
    )
