"""Render a posed FLAME head into the maps the fitter compares with the prediction.

:func:`render_maps` renders ground-truth or preview maps (UV, canonical normals, coverage, depth) for given FLAME
parameters and camera, with the conventions the fitter's terms use (see :mod:`.objective`);
:func:`vertex_normals` and :func:`corner_uv_tensor` are shared with them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..flame.model import FlameModel, FlameParams
from ..flame.uv import UVTemplate
from ..render.camera import Camera, world_to_camera
from ..render.raster import corner_rows, interpolate, rasterize

__all__ = ["vertex_normals", "render_maps", "corner_uv_tensor"]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Parameters
    ----------
    vertices : (B, V, 3) tensor
    faces : (F, 3) integer tensor (counter-clockwise seen from outside)

    Returns
    -------
    (B, V, 3) tensor of unit normals.
    """
    faces = faces.long()
    batch, n_vert, _ = vertices.shape
    flat = vertices.reshape(-1, 3)
    # Row indices of the corners, corner-major (3*B*F,): one dim-0 index_select of (B*V, 3) rows gathers them and
    # one index_add spreads each face normal to its three corners (the fast CPU paths, one op each way).
    rows = corner_rows(faces, batch, n_vert)
    c0, c1, c2 = flat.index_select(0, rows).view(3, -1, 3).unbind(0)
    fn = torch.linalg.cross(c1 - c0, c2 - c0, dim=-1)
    normals = torch.zeros_like(flat).index_add(0, rows, fn.repeat(3, 1))
    return torch.nn.functional.normalize(normals.view_as(vertices), dim=-1, eps=1e-12)


def corner_uv_tensor(uv_template: UVTemplate, like: torch.Tensor) -> torch.Tensor:
    """(F*3, 2) per-corner UVs in the network convention ``(u, 1 - v)``, on ``like``'s device and dtype."""
    uv = uv_template.corner_uv.reshape(-1, 2)
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)
    return torch.as_tensor(uv, dtype=like.dtype, device=like.device)


def render_maps(
    flame: FlameModel,
    uv_template: UVTemplate,
    params: FlameParams,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    camera: Camera,
) -> dict[str, np.ndarray]:
    """Render UV, canonical-normal and coverage maps of one head (for ground truth, tests and previews).

    Parameters
    ----------
    flame : FlameModel
    uv_template : UVTemplate with the same topology
    params : FlameParams with batch 1 (``translation`` and ``global_pose`` are normally left None)
    rotation : (3, 3) head rotation R; translation : (3,) t (world = R v + t)
    camera : the reference camera (its focal, principal point and square image size S)

    Returns
    -------
    dict with ``uv`` (S, S, 2), ``normals`` (S, S, 3), ``mask`` (S, S) bool, ``depth`` (S, S) float32 (inf on
    background), ``triangle`` (S, S) int64 visible triangle index (-1 on background) and ``vertices`` (V, 3)
    world-space vertices, as numpy arrays.
    """
    with torch.no_grad():
        ref = flame.v_template
        out = flame(params)
        neckless = FlameParams(**{**params.__dict__, "neck_pose": None})
        canon = flame(neckless).vertices
        rot = torch.as_tensor(rotation, dtype=ref.dtype, device=ref.device)
        t = torch.as_tensor(translation, dtype=ref.dtype, device=ref.device)
        world = out.vertices @ rot.T + t
        camera = Camera(camera.focal.to(ref), camera.principal_point.to(ref), camera.size)
        cam = world_to_camera(world)
        faces = flame.faces
        rast = rasterize(camera.clip(cam), faces, (camera.size, camera.size))
        n_faces = faces.shape[0]
        uv = interpolate(corner_uv_tensor(uv_template, ref), rast, torch.arange(n_faces * 3, device=ref.device).view(n_faces, 3))
        attrs = interpolate(torch.cat([vertex_normals(canon, faces), -cam[..., 2:3]], -1), rast, faces)
        normals = torch.nn.functional.normalize(attrs[..., :3], dim=-1, eps=1e-12)
        triangle = rast.triangle_ids()
        depth = torch.where(triangle >= 0, attrs[..., 3], torch.full_like(attrs[..., 3], float("inf")))
    return {
        "uv": uv[0].cpu().numpy().astype(np.float32),
        "normals": normals[0].cpu().numpy().astype(np.float32),
        "mask": triangle[0].cpu().numpy() >= 0,
        "depth": depth[0].cpu().numpy().astype(np.float32),
        "triangle": triangle[0].cpu().numpy().astype(np.int64),
        "vertices": world[0].cpu().numpy().astype(np.float32),
    }
