"""Render a posed FLAME head into the maps the fitter compares with the prediction.

The same code renders the fitting images at every step and, through :func:`render_maps`, ground-truth or
preview maps (UV, canonical normals, coverage) for given FLAME parameters and camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..flame.model import FlameModel, FlameParams
from ..flame.uv import UVTemplate
from ..render.camera import clip_from_camera, world_to_camera
from ..render.raster import antialias, corner_rows, interpolate, rasterize

__all__ = ["HeadMaps", "vertex_normals", "render_head", "render_depth", "render_maps", "corner_uv_tensor"]


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


@dataclass
class HeadMaps:
    """Rendered maps, each (B, S, S, C) or (B, S, S).

    Attributes
    ----------
    rast : (B, S, S, 4) rasterizer output
    uv : (B, S, S, 2) interpolated UV (network convention), zero on background
    normals : (B, S, S, 3) unit canonical normals (no-neck mesh), zero on background
    coverage : (B, S, S) 1 where the head covers the pixel centre
    depth : (B, S, S) camera distance (metres), +inf on background
    regions : (B, S, S, K) interpolated per-vertex region attributes
    silhouette : (B, S, S) antialiased region channel ``sil_channel`` (None when not asked for)
    """

    rast: torch.Tensor
    uv: torch.Tensor
    normals: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    regions: torch.Tensor
    silhouette: torch.Tensor | None


def render_head(
    world_vertices: torch.Tensor,
    canonical_normals: torch.Tensor,
    faces: torch.Tensor,
    corner_uv: torch.Tensor,
    focal: torch.Tensor,
    principal_point: torch.Tensor,
    size: int,
    region_attr: torch.Tensor,
    sil_channel: int | None = None,
    cull_back: bool = False,
) -> HeadMaps:
    """Rasterize a posed head with the reference camera.

    Parameters
    ----------
    world_vertices : (B, V, 3) world-space vertices (R v + t)
    canonical_normals : (B, V, 3) unit vertex normals in the FLAME canonical frame
    faces : (F, 3) integer tensor
    corner_uv : (F*3, 2) per-corner UVs (see :func:`corner_uv_tensor`)
    focal : (B,) normalised focal; principal_point : (B, 2)
    size : render size S
    region_attr : (V, K) per-vertex region indicators, interpolated into ``regions``
    sil_channel : index of the region channel to antialias into ``silhouette``, or None
    cull_back : skip back-facing triangles (see :func:`core.render.raster.rasterize`)
    """
    cam = world_to_camera(world_vertices)
    clip = clip_from_camera(cam, focal, principal_point, size)
    rast = rasterize(clip, faces, (size, size), cull_back=cull_back)
    n_faces = faces.shape[0]
    uv_tri = torch.arange(n_faces * 3, device=faces.device).view(n_faces, 3)
    uv = interpolate(corner_uv, rast, uv_tri)
    depth_v = -cam[..., 2:3]
    attrs = torch.cat([canonical_normals, depth_v, region_attr.expand(world_vertices.shape[0], -1, -1)], -1)
    img = interpolate(attrs, rast, faces)
    coverage = (rast[..., 3] > 0).to(world_vertices.dtype)
    # split (one gradient concatenation in backward) rather than slices (one full-size gradient each)
    normals_raw, depth_raw, regions = img.split([3, 1, img.shape[-1] - 4], -1)
    normals = torch.nn.functional.normalize(normals_raw, dim=-1, eps=1e-12)
    depth = torch.where(coverage > 0, depth_raw[..., 0], torch.full_like(depth_raw[..., 0], float("inf")))
    sil = None
    if sil_channel is not None:
        sil = antialias(regions[..., sil_channel : sil_channel + 1].contiguous(), rast, clip, faces)[..., 0]
    return HeadMaps(rast, uv, normals, coverage, depth, regions, sil)


def render_depth(
    world_vertices: torch.Tensor,
    faces: torch.Tensor,
    focal: torch.Tensor,
    principal_point: torch.Tensor,
    size: int,
    cull_back: bool = False,
) -> torch.Tensor:
    """(B, S, S) camera distance of the visible surface, +inf on background: :func:`render_head`'s ``depth``
    without the other maps (the visibility test of the correspondence loss needs nothing else)."""
    cam = world_to_camera(world_vertices)
    clip = clip_from_camera(cam, focal, principal_point, size)
    rast = rasterize(clip, faces, (size, size), cull_back=cull_back)
    depth = interpolate(-cam[..., 2:3], rast, faces)[..., 0]
    return torch.where(rast[..., 3] > 0, depth, torch.full_like(depth, float("inf")))


def render_maps(
    flame: FlameModel,
    uv_template: UVTemplate,
    params: FlameParams,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal: float,
    principal_point,
    size: int,
) -> dict[str, np.ndarray]:
    """Render UV, canonical-normal and coverage maps of one head (for ground truth, tests and previews).

    Parameters
    ----------
    flame : FlameModel
    uv_template : UVTemplate with the same topology
    params : FlameParams with batch 1 (``translation`` and ``global_pose`` are normally left None)
    rotation : (3, 3) head rotation R; translation : (3,) t (world = R v + t)
    focal, principal_point : reference camera (fl, pp)
    size : square image size in pixels

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
        normals = vertex_normals(canon, flame.faces)
        maps = render_head(
            world,
            normals,
            flame.faces,
            corner_uv_tensor(uv_template, ref),
            torch.tensor([float(focal)], dtype=ref.dtype, device=ref.device),
            torch.as_tensor(np.asarray(principal_point, dtype=np.float64), dtype=ref.dtype, device=ref.device)[None],
            size,
            ref.new_zeros(ref.shape[0], 0),
        )
    return {
        "uv": maps.uv[0].cpu().numpy().astype(np.float32),
        "normals": maps.normals[0].cpu().numpy().astype(np.float32),
        "mask": maps.coverage[0].cpu().numpy() > 0,
        "depth": maps.depth[0].cpu().numpy().astype(np.float32),
        "triangle": maps.rast[0, ..., 3].cpu().numpy().astype(np.int64) - 1,
        "vertices": world[0].cpu().numpy().astype(np.float32),
    }
