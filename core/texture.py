"""Bake the photo into the FLAME UV texture: visible texels from the photo, the rest from the mirrored side or a
skin tone estimate, padded past every chart border so that bilinear and mipmap sampling never see background.

Conventions
-----------
* Camera (Pixel3DMM, ``pixel3dmm.md`` §3.2; :mod:`core.render.camera`): an OpenGL camera at (0, 0, 1) looking
  down −z with identity rotation, so camera coordinates are ``(X, Y, Z) = world − (0, 0, 1)`` and points in front
  have ``Z < 0``. With ``K_photo = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in full-photo pixels (x right, y down,
  pixel centres at integer + 0.5) a world point projects to ``x = fx · X / (−Z) + cx`` and
  ``y = −fy · Y / (−Z) + cy`` (i.e. ``K @ diag(1, −1, −1) @ (X, Y, Z)``).
* UVs are per triangle corner in the OBJ convention (u right, v up, both in [0, 1]).
* The returned image has **row 0 at the top of the texture (v = 1)** and column 0 at u = 0, like every image in
  the core: texel ``(row i, column j)`` is centred at ``u = (j + 0.5) / size``, ``v = 1 − (i + 0.5) / size``.
  Blender stores pixels bottom row first: use :func:`blender_pixels`.
* Colours stay in the photo's encoding (sRGB), so the image is meant for an sRGB image datablock.

Steps
-----
1. UV rasterization: every texel centre inside a UV triangle gets the triangle and its barycentrics, hence a
   point on the posed surface and an interpolated vertex normal; texels a triangle edge merely touches are added
   with barycentrics clamped onto the triangle. This affine special case is done in numpy and cv2 rather than
   with :func:`core.render.rasterize`, which gives the same triangles and barycentrics (the tests check it) but
   takes seconds at 1024² on a CPU.
2. Visibility: a texel is visible when its point lies in front of the camera, projects inside the photo, passes
   a depth test and faces the camera. The depth test compares the texel's depth with a depth render of the posed
   mesh over its bounding box in the photo (an exact z-buffer of ray–plane depths at pixel centres, the same
   pixel-centre rule as :func:`core.render.rasterize`, again in numpy for speed), allowing ``depth_tolerance``
   plus the depth change across one depth pixel on the texel's slanted surface. Its weight ramps smoothly
   (smoothstep) from 0 at ``cos = min_cos`` to 1 at ``cos = full_cos`` between the interpolated vertex normal
   and the direction to the camera.
3. Photo colours are sampled bilinearly at the projected positions (``cv2.remap``). When the face covers more
   photo pixels than texels, the photo is first blurred over the head by a Gaussian matched to that ratio
   (``antialias``), so the sampling does not alias.
4. Fill: the colour is ``w · photo + (1 − w) · fallback``. The fallback is the mirrored texel's photo colour
   (blended by that texel's own weight with the skin tone) and otherwise the skin tone. The mirrored position
   of a texel is exact on the mesh: the texel's barycentrics are applied to the UVs of the mirror partners of
   its triangle's corners (``mirror_index``), picking for each partner the UV corner closest to the corner's UV
   reflected about the layout's measured mirror axis (this resolves vertices that sit on UV seams).
   The skin tone is the per-channel median of ``skin_mask`` photo pixels, or else of fully visible texels (of
   all visible texels when none is fully visible).
5. Seam padding: every texel within ``padding`` texels of a chart takes the colour of the nearest chart texel
   (cv2 distance transform); texels further away get the skin tone, so the whole image is defined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ImageError, Pixel3DMMError
from .render.camera import CAMERA_POSITION as _CAMERA

logger = logging.getLogger(__name__)

CAMERA_POSITION = np.asarray(_CAMERA, dtype=np.float64)  # the fixed camera centre in world space (metres)


@dataclass(frozen=True)
class BakedTexture:
    """A texture baked from one photo into UV space.

    Attributes
    ----------
    image : np.ndarray
        (S, S, 3) float32 colours in [0, 1] (the photo's sRGB encoding); row 0 is the top of the texture
        (v = 1). Every texel is defined (charts, padding, then the skin tone).
    visible : np.ndarray
        (S, S) bool, texels whose colour comes (at least partly, weight > 0) from the photo.
    filled_from_mirror : np.ndarray
        (S, S) bool, chart texels that are not visible and take their colour from the visible mirrored texel.
    covered : np.ndarray
        (S, S) bool, texels inside a UV triangle.
    weight : np.ndarray
        (S, S) float32 in [0, 1], the photo's share of each texel's colour.
    skin_tone : np.ndarray
        (3,) float32 skin colour estimate used for texels that neither side shows.
    """

    image: np.ndarray
    visible: np.ndarray
    filled_from_mirror: np.ndarray
    covered: np.ndarray
    weight: np.ndarray
    skin_tone: np.ndarray


@dataclass(frozen=True)
class UVRaster:
    """Per-texel triangle and barycentrics of a UV layout.

    Attributes
    ----------
    size : int
        Texture size S.
    texel : np.ndarray
        (N,) int64 flat index ``row * S + column`` of each covered texel.
    face : np.ndarray
        (N,) int64 triangle of each covered texel.
    bary : np.ndarray
        (N, 3) float32 barycentric weights of the triangle's corners (non-negative, summing to 1).
    """

    size: int
    texel: np.ndarray
    face: np.ndarray
    bary: np.ndarray


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """UV (..., 2) in the OBJ convention -> continuous texel coordinates (..., 2) (x = column, y = row; texel
    centres at integer + 0.5, row 0 at v = 1)."""
    uv = np.asarray(uv, dtype=np.float64)
    return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)


def _centres_inside(px: np.ndarray, faces: np.ndarray, shape: tuple[int, int], max_pairs: int = 1 << 22):
    """(flat pixel, face) pairs of every pixel centre inside (or on an edge of) the given triangles, in face order.

    ``px`` (F, 3, 2) are pixel coordinates (x, y; centres at integer + 0.5) in an image of ``shape`` (H, W); only
    ``faces`` are drawn.
    """
    tri = px[faces]
    size = np.array([shape[1], shape[0]])
    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, size).astype(np.int64)  # first pixel index per axis
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)
    nx = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    count = nx * np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ends = np.cumsum(count)
    texels, owners = [], []
    start = 0
    while start < len(faces):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - count[start] + max_pairs, side="right")))
        c = count[start:stop]
        local_f = np.repeat(np.arange(start, stop), c)
        k = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        ix = lo[local_f, 0] + k % nx[local_f]
        iy = lo[local_f, 1] + k // nx[local_f]
        dx = ix + 0.5 - tri[local_f, 0, 0]
        dy = iy + 0.5 - tri[local_f, 0, 1]
        b1 = (dx * e2[local_f, 1] - dy * e2[local_f, 0]) / det[local_f]
        b2 = (e1[local_f, 0] * dy - e1[local_f, 1] * dx) / det[local_f]
        inside = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
        texels.append((iy * shape[1] + ix)[inside])
        owners.append(faces[local_f[inside]])
        start = stop
    return np.concatenate(texels), np.concatenate(owners)


def rasterize_uv(corner_uv: np.ndarray, size: int) -> UVRaster:
    """Find the triangle and barycentrics of every texel covered by a UV layout.

    Every texel whose centre lies inside a triangle gets that triangle (the pixel-centre rule of
    :func:`core.render.rasterize`; the later triangle wins on shared edges). The coverage is then made
    conservative: texels that a triangle edge merely touches (cv2 polygon fill) get that triangle with barycentrics
    clamped onto it, so sampling across chart borders stays on the surface. Zero-area UV triangles are skipped.

    Parameters
    ----------
    corner_uv : np.ndarray
        (F, 3, 2) UV of each triangle corner, OBJ convention (u right, v up).
    size : int
        Texture size S.

    Returns
    -------
    UVRaster
    """
    px = uv_to_texel(corner_uv, size)  # (F, 3, 2)
    e1 = px[:, 1] - px[:, 0]
    e2 = px[:, 2] - px[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    drawn = np.flatnonzero(np.abs(det) > 1e-12)
    ids = _fill_ids((size, size), px, drawn).reshape(-1)
    centre_texel, centre_face = _centres_inside(px, drawn, (size, size))
    ids[centre_texel] = centre_face + 1
    texel = np.flatnonzero(ids)
    face = ids[texel].astype(np.int64) - 1
    bary = np.empty((texel.size, 3), dtype=np.float32)
    for c in _chunks(texel.size):
        f = face[c]
        dx = texel[c] % size + 0.5 - px[f, 0, 0]
        dy = texel[c] // size + 0.5 - px[f, 0, 1]
        b1 = (dx * e2[f, 1] - dy * e2[f, 0]) / det[f]
        b2 = (e1[f, 0] * dy - e1[f, 1] * dx) / det[f]
        b = np.clip(np.stack([1.0 - b1 - b2, b1, b2], axis=1), 0.0, None)
        bary[c] = b / b.sum(axis=1, keepdims=True)
    return UVRaster(size, texel, face, bary)


def project_to_photo(points_world: np.ndarray, K_photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points with the fixed Pixel3DMM camera (module docstring) and full-photo intrinsics.

    Parameters
    ----------
    points_world : np.ndarray
        (N, 3) world points (posed head, metres); float32 input gives float32 output, anything else float64.
    K_photo : np.ndarray
        (3, 3) intrinsics in photo pixels.

    Returns
    -------
    xy : np.ndarray
        (N, 2) pixel coordinates (x right, y down, pixel centres at integer + 0.5).
    depth : np.ndarray
        (N,) distance in front of the camera, ``−Z`` (positive for visible points).
    """
    pts = np.asarray(points_world)
    dtype = np.float32 if pts.dtype == np.float32 else np.float64
    cam = pts.astype(dtype, copy=False) - CAMERA_POSITION.astype(dtype)
    depth = -cam[:, 2]
    safe = np.maximum(depth, dtype(1e-9))
    k = np.asarray(K_photo, dtype=np.float64).astype(dtype)
    x = k[0, 0] * cam[:, 0] / safe + k[0, 2]
    y = -k[1, 1] * cam[:, 1] / safe + k[1, 2]
    return np.stack([x, y], axis=1), depth


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) of a triangle mesh (right-hand rule on the face order)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, f[:, k], cross)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, norm, out=np.zeros_like(normals), where=norm > 0)


def _fill_ids(shape: tuple[int, int], corners_px: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Draw triangles (pixel-centre coordinates (F, 3, 2), centres at +0.5) in ``order`` into an (H, W) int32
    buffer of ``triangle + 1`` (0 = empty); later triangles overwrite earlier ones (cv2 fill, 8 fraction bits)."""
    ids = np.zeros(shape, dtype=np.int32)
    fixed = np.round((corners_px - 0.5) * 256.0).astype(np.int32)  # cv2 puts pixel centres at integers
    for f in order:
        cv2.fillConvexPoly(ids, fixed[f], int(f) + 1, cv2.LINE_8, 8)
    return ids


def _depth_map(
    vertices: np.ndarray, faces: np.ndarray, K_photo: np.ndarray, photo_hw: tuple[int, int], resolution: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera depth (``−Z``) of the posed mesh over its bounding box in the photo.

    A z-buffer over every (pixel centre, triangle) pair with the exact depth where the pixel's viewing ray meets
    the triangle's plane; pixels that only touch a triangle edge (silhouettes) take the depth of the nearest such
    triangle's plane, drawn far to near.

    Returns the depth map (h, w) (inf where nothing is drawn), the photo-pixel origin (x0, y0) of the box and the
    number of depth pixels per photo pixel.
    """
    k = np.asarray(K_photo, dtype=np.float64)
    xy, depth = project_to_photo(vertices, k)
    front = depth > 1e-6
    drawable = np.flatnonzero(front[faces].all(axis=1))
    if drawable.size == 0:
        raise Pixel3DMMError("The head is behind the camera, so no texture can be baked; check the fit.")
    lo = np.maximum(xy[front].min(axis=0) - 2.0, 0.0)
    hi = np.minimum(xy[front].max(axis=0) + 2.0, [photo_hw[1], photo_hw[0]])
    extent = np.maximum(hi - lo, 1.0)
    scale = resolution / float(extent.max())
    w_px, h_px = (int(np.ceil(e * scale)) for e in extent)
    corners = (xy[faces] - lo) * scale
    cam = np.asarray(vertices, dtype=np.float64) - CAMERA_POSITION
    normal = np.cross(cam[faces[:, 1]] - cam[faces[:, 0]], cam[faces[:, 2]] - cam[faces[:, 0]])
    offset = np.einsum("fc,fc->f", normal, cam[faces[:, 0]])
    nearest_corner = depth[faces].min(axis=1)

    def plane_depth(pix: np.ndarray, face: np.ndarray) -> np.ndarray:
        # viewing ray of each pixel centre in OpenGL camera coordinates, scaled to depth 1: (x', y', -1)
        px = lo[0] + (pix % w_px + 0.5) / scale
        py = lo[1] + (pix // w_px + 0.5) / scale
        n = normal[face]
        den = n[:, 0] * (px - k[0, 2]) / k[0, 0] - n[:, 1] * (py - k[1, 2]) / k[1, 1] - n[:, 2]
        edge_on = np.abs(den) <= 1e-9 * np.linalg.norm(n, axis=1)
        return np.where(edge_on, nearest_corner[face], offset[face] / np.where(edge_on, 1.0, den))

    out = np.full(h_px * w_px, np.inf)
    pix, face = _centres_inside(corners, drawable, (h_px, w_px))
    np.minimum.at(out, pix, plane_depth(pix, face))
    order = drawable[np.argsort(-depth[faces[drawable]].mean(axis=1), kind="stable")]
    ids = _fill_ids((h_px, w_px), corners, order).reshape(-1)
    edge = np.flatnonzero(np.isinf(out) & (ids > 0))
    out[edge] = plane_depth(edge, ids[edge].astype(np.int64) - 1)
    return out.reshape(h_px, w_px), lo, scale


def mirror_corner_uv(faces: np.ndarray, corner_uv: np.ndarray, mirror_index: np.ndarray) -> np.ndarray:
    """UV of the mirror image of every triangle corner (step 4 of the module docstring).

    For each corner, among the UV corners of its vertex's mirror partner, the one closest to the corner's UV
    reflected about the layout's mirror axis (the median of ``(u_i + u_mirror(i)) / 2`` over vertices).

    Parameters
    ----------
    faces : np.ndarray
        (F, 3) integer triangles.
    corner_uv : np.ndarray
        (F, 3, 2) UV of each triangle corner.
    mirror_index : np.ndarray
        (V,) mirror partner of each vertex.

    Returns
    -------
    np.ndarray
        (F, 3, 2) float64 mirrored corner UVs; a texel with barycentrics ``b`` in face ``f`` mirrors to
        ``b @ result[f]``.
    """
    faces = np.asarray(faces, dtype=np.int64)
    flat_v = faces.reshape(-1)
    flat_uv = np.asarray(corner_uv, dtype=np.float64).reshape(-1, 2)
    # the layout's mirror axis: median of (u_i + u_mirror(i)) / 2 over vertices (one UV per vertex suffices)
    any_uv = np.zeros((int(flat_v.max()) + 1, 2))
    any_uv[flat_v] = flat_uv
    used = np.zeros(any_uv.shape[0], dtype=bool)
    used[flat_v] = True
    mi = np.asarray(mirror_index, dtype=np.int64)
    axis = float(np.median(0.5 * (any_uv[used, 0] + any_uv[mi[used], 0])))
    # distinct UV corners of every vertex, grouped by vertex
    bits = np.ascontiguousarray(flat_uv).view(np.int64)  # exact identity of the UV values
    order = np.lexsort((bits[:, 1], bits[:, 0], flat_v))
    sv, sb = flat_v[order], bits[order]
    first = order[np.r_[True, (sv[1:] != sv[:-1]) | np.any(sb[1:] != sb[:-1], axis=1)]]
    uniq_uv = flat_uv[first]  # sorted by vertex
    owner = flat_v[first]
    counts = np.bincount(owner, minlength=any_uv.shape[0])
    starts = np.cumsum(counts) - counts
    # for each face corner, the UV corner of its mirror vertex nearest to the reflected corner UV
    reflected = np.stack([2.0 * axis - flat_uv[:, 0], flat_uv[:, 1]], axis=1)  # (3F, 2)
    n_cand = counts[mi[flat_v]]
    if np.any(n_cand == 0):
        raise Pixel3DMMError("The mirror index points at vertices outside the UV layout; pass UVTemplate.mirror_index.")
    seg = np.repeat(np.arange(flat_v.size), n_cand)
    cand = np.repeat(starts[mi[flat_v]], n_cand) + np.arange(seg.size) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    diff = uniq_uv[cand] - reflected[seg]
    d2 = np.einsum("nc,nc->n", diff, diff)
    seg_start = np.cumsum(n_cand) - n_cand
    best = np.minimum.reduceat(d2, seg_start)
    hits = np.flatnonzero(d2 == best[seg])
    chosen = hits[np.r_[True, seg[hits][1:] != seg[hits][:-1]]]  # first minimum of every corner
    logger.debug("UV mirror axis u = %.4f; largest deviation from a plain reflection %.4f", axis,
                 float(np.sqrt(best.max())))
    return uniq_uv[cand[chosen]].reshape(-1, 3, 2)


def _prefilter(photo: np.ndarray, vertices: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray,
               K_photo: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Blur the head's part of the photo when the photo is sharper than the texture can hold.

    The ratio ``r`` of photo pixels per texel is the median over camera-facing triangles of
    sqrt(projected area / texel area); for ``r > 1`` a Gaussian of sigma ``0.5 · sqrt(r² − 1)`` photo pixels
    (the usual anti-aliasing prefilter for a downsampling by ``r``) is applied over the head's bounding box.
    Returns the (possibly) filtered photo and the sigma (0 when unfiltered).
    """
    xy, depth = project_to_photo(vertices, K_photo)
    tri_xy = xy[faces]
    e1, e2 = tri_xy[:, 1] - tri_xy[:, 0], tri_xy[:, 2] - tri_xy[:, 0]
    photo_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    t = uv_to_texel(corner_uv, size)
    u1, u2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    texel_area = 0.5 * np.abs(u1[:, 0] * u2[:, 1] - u1[:, 1] * u2[:, 0])
    normals = vertex_normals(vertices, faces)[faces].sum(axis=1)
    to_cam = CAMERA_POSITION - np.asarray(vertices, dtype=np.float64)[faces].mean(axis=1)
    facing = (np.einsum("fc,fc->f", normals, to_cam) > 0.5 * np.linalg.norm(normals, axis=1)
              * np.linalg.norm(to_cam, axis=1)) & (depth[faces] > 1e-6).all(axis=1) & (texel_area > 0)
    if not facing.any():
        return photo, 0.0
    ratio = float(np.sqrt(np.median(photo_area[facing] / texel_area[facing])))
    if ratio <= 1.0:
        return photo, 0.0
    sigma = 0.5 * float(np.sqrt(ratio * ratio - 1.0))
    margin = int(np.ceil(3.0 * sigma)) + 2
    front = depth > 1e-6
    x0, y0 = np.maximum(np.floor(xy[front].min(axis=0)).astype(int) - margin, 0)
    x1, y1 = np.minimum(np.ceil(xy[front].max(axis=0)).astype(int) + margin, [photo.shape[1], photo.shape[0]])
    out = photo.copy()
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = cv2.GaussianBlur(photo[y0:y1, x0:x1], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return out, sigma


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) of an (H, W, C) float32 image at pixel coordinates (N, 2) (centres at +0.5);
    positions outside the image read the nearest border pixel."""
    n = xy.shape[0]
    if n == 0:  # cv2.remap refuses an empty map (a head wholly outside the photo)
        return np.zeros((0, image.shape[-1]), dtype=image.dtype)
    width = 1024
    rows = -(-n // width)
    pad = np.zeros((rows * width, 2), dtype=np.float32)
    pad[:n] = xy - 0.5
    out = cv2.remap(
        image, pad[:, 0].reshape(rows, width), pad[:, 1].reshape(rows, width), cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape(rows * width, -1)[:n]


def _pad_charts(image: np.ndarray, filled: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy into every texel within ``rounds`` texels (Euclidean) of a filled texel the colour of the nearest
    filled texel; returns the image and the mask of defined texels."""
    distance, label = cv2.distanceTransformWithLabels(
        (~filled).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE, labelType=cv2.DIST_LABEL_PIXEL
    )
    source = np.zeros(int(label.max()) + 1, dtype=np.int64)
    source[label[filled]] = np.flatnonzero(filled)  # every filled texel is its own label's seed
    grow = ~filled & (distance <= rounds)
    out = image.copy()
    out[grow] = image.reshape(-1, image.shape[-1])[source[label[grow]]]
    return out, filled | grow


def _chunks(n: int, step: int = 1 << 19) -> list[slice]:
    """Consecutive slices of at most ``step`` items covering ``range(n)``."""
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _interpolate(bary: np.ndarray, tri: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Barycentric interpolation: ``bary`` (N, 3), ``tri`` (N, 3) rows of ``values`` (or (N,) faces of a (F, 3, C)
    per-corner array) -> (N, C) float32."""
    corners = np.take(values, tri, axis=0)  # (N, 3, C)
    return np.einsum("nk,nkc->nc", bary.astype(np.float32, copy=False), corners)


def bake_texture(
    photo_rgb: np.ndarray,
    vertices_posed: np.ndarray,
    faces: np.ndarray,
    corner_uv: np.ndarray,
    K_photo: np.ndarray,
    *,
    size: int = 1024,
    mirror_index: np.ndarray | None = None,
    skin_mask: np.ndarray | None = None,
    min_cos: float = 0.1,
    full_cos: float = 0.4,
    depth_tolerance: float = 0.003,
    depth_resolution: int = 384,
    padding: int = 8,
    antialias: bool = True,
) -> BakedTexture:
    """Bake a photo into the UV texture of a posed mesh (conventions and steps: module docstring).

    Parameters
    ----------
    photo_rgb : np.ndarray
        (H, W, 3) float photo in [0, 1], row 0 at the top.
    vertices_posed : np.ndarray
        (V, 3) world-space vertices (``R v + t``), metres.
    faces : np.ndarray
        (F, 3) integer triangles.
    corner_uv : np.ndarray
        (F, 3, 2) UV of each triangle corner (OBJ convention, v up), e.g. ``UVTemplate.corner_uv``.
    K_photo : np.ndarray
        (3, 3) intrinsics in full-photo pixels.
    size : int
        Texture size S.
    mirror_index : np.ndarray, optional
        (V,) vertex index of each vertex's left/right mirror partner (``UVTemplate.mirror_index``); without it
        invisible texels get the skin tone only.
    skin_mask : np.ndarray, optional
        (H, W) bool photo pixels of skin for the skin tone estimate.
    min_cos, full_cos : float
        Cosines between normal and view direction at which the photo weight starts and reaches 1.
    depth_tolerance : float
        Depth test slack in metres (grows with the depth render's pixel footprint on slanted surfaces).
    depth_resolution : int
        Size in pixels of the longer side of the depth render over the head's bounding box.
    padding : int
        Width in texels of the padding grown around every UV chart.
    antialias : bool
        Blur the head's part of the photo first when it has more pixels than the texture has texels there
        (step 3 of the module docstring), so fine photo detail averages instead of aliasing.

    Returns
    -------
    BakedTexture
    """
    photo = np.asarray(photo_rgb)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.shape[0] < 1 or photo.shape[1] < 1:
        raise ImageError("The photo must be an RGB image of shape (H, W, 3); load it with the photo loader.")
    if not np.issubdtype(photo.dtype, np.floating) or float(photo.max()) > 1.0 + 1e-3 or float(photo.min()) < -1e-3:
        raise ImageError("The photo must be a float RGB image with values in [0, 1]; load it with the photo loader.")
    photo = np.ascontiguousarray(photo, dtype=np.float32)
    verts = np.asarray(vertices_posed, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    corner_uv = np.asarray(corner_uv, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise Pixel3DMMError("Pass posed vertices as (V, 3) and faces as (F, 3) to bake a texture.")
    if corner_uv.shape != faces.shape + (2,):
        raise Pixel3DMMError("Pass one UV per triangle corner, shaped (F, 3, 2) like the faces, to bake a texture.")
    if mirror_index is not None and np.asarray(mirror_index).shape != (verts.shape[0],):
        raise Pixel3DMMError("The mirror index must hold one vertex index per vertex; pass UVTemplate.mirror_index.")
    if skin_mask is not None and np.asarray(skin_mask).shape != photo.shape[:2]:
        raise Pixel3DMMError("The skin mask must have the photo's height and width; resize it to the photo.")
    if not 0.0 <= min_cos < full_cos <= 1.0:
        raise Pixel3DMMError("Texture weights need 0 <= min_cos < full_cos <= 1; pass e.g. 0.1 and 0.4.")
    height, width = photo.shape[:2]

    raster = rasterize_uv(corner_uv, size)
    n_texels = raster.texel.size
    v32 = verts.astype(np.float32)
    n32 = vertex_normals(verts, faces).astype(np.float32)
    dmap, origin, scale = _depth_map(verts, faces, K_photo, (height, width), depth_resolution)
    source, sigma = _prefilter(photo, verts, faces, corner_uv, K_photo, size) if antialias else (photo, 0.0)
    fx = float(np.asarray(K_photo)[0, 0])

    # pass 1, in chunks of texels (bounded memory): photo weight and colour of every chart texel
    weight = np.zeros(n_texels, dtype=np.float32)
    colour = np.zeros((n_texels, 3), dtype=np.float32)
    for c in _chunks(n_texels):
        bary, tri = raster.bary[c], faces[raster.face[c]]
        points = _interpolate(bary, tri, v32)
        normals = _interpolate(bary, tri, n32)
        # facing weight: smoothstep of the cosine between normal and direction to the camera
        to_cam = CAMERA_POSITION.astype(np.float32) - points
        cos = np.einsum("nc,nc->n", normals, to_cam) / np.sqrt(
            np.maximum(np.einsum("nc,nc->n", normals, normals) * np.einsum("nc,nc->n", to_cam, to_cam), 1e-24))
        t = np.clip((cos - min_cos) / (full_cos - min_cos), 0.0, 1.0)
        # inside the photo and not occluded: depth test with slack for the depth pixel's size on slanted surfaces
        xy, depth = project_to_photo(points, K_photo)
        inside = (depth > 1e-6) & (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
        dxy = np.floor((xy - origin) * scale).astype(np.int64)
        in_map = inside & np.all((dxy >= 0) & (dxy < [dmap.shape[1], dmap.shape[0]]), axis=1)
        occluder = np.full(points.shape[0], np.inf, dtype=np.float32)
        occluder[in_map] = dmap[dxy[in_map, 1], dxy[in_map, 0]]
        footprint = depth / np.float32(fx * scale)  # metres per depth pixel at the texel
        slope = np.sqrt(np.maximum(1.0 - cos * cos, 0.0)) / np.maximum(cos, 0.2)
        seen = inside & (depth <= occluder + depth_tolerance + footprint * slope)
        weight[c] = np.where(seen, t * t * (3.0 - 2.0 * t), 0.0)
        colour[c][inside] = _sample(source, xy[inside])

    # skin tone
    if skin_mask is not None and np.asarray(skin_mask).any():
        skin = np.median(photo[np.asarray(skin_mask, dtype=bool)], axis=0)
    elif (weight > 0).any():  # fully visible texels, or else every visible one
        skin = np.median(colour[weight >= (1.0 if (weight >= 1.0).any() else 1e-6)], axis=0)
    else:
        raise Pixel3DMMError(
            "No part of the head faces the camera in the photo, so no texture can be baked; check the fit."
        )
    skin = skin.astype(np.float32)

    # pass 2: blend with the mirrored texel (premultiplied colour and weight, bilinear) and the skin tone
    flat_n = size * size
    w_img = np.zeros(flat_n, dtype=np.float32)
    w_img[raster.texel] = weight
    mirror_w = np.zeros(n_texels, dtype=np.float32)
    image = np.zeros((flat_n, 3), dtype=np.float32)
    if mirror_index is not None:
        premult = np.zeros((flat_n, 4), dtype=np.float32)
        premult[raster.texel, :3] = colour * weight[:, None]
        premult[raster.texel, 3] = weight
        premult = premult.reshape(size, size, 4)
        mirror_px = uv_to_texel(mirror_corner_uv(faces, corner_uv, mirror_index), size).astype(np.float32)
    for c in _chunks(n_texels):
        fallback = np.broadcast_to(skin, (weight[c].size, 3))
        if mirror_index is not None:
            sampled = _sample(premult, _interpolate(raster.bary[c], raster.face[c], mirror_px))
            mirror_w[c] = np.clip(sampled[:, 3], 0.0, 1.0)
            fallback = sampled[:, :3] + (1.0 - mirror_w[c])[:, None] * skin
        w = weight[c][:, None]
        image[raster.texel[c]] = w * colour[c] + (1.0 - w) * fallback

    covered = np.zeros(flat_n, dtype=bool)
    covered[raster.texel] = True
    mirror_used = np.zeros(flat_n, dtype=bool)
    mirror_used[raster.texel] = (weight <= 0) & (mirror_w > 0)
    image, defined = _pad_charts(image.reshape(size, size, 3), covered.reshape(size, size), padding)
    image[~defined] = skin
    np.clip(image, 0.0, 1.0, out=image)
    logger.info("baked %dx%d texture: %.1f%% of chart texels visible, %.1f%% from the mirror, photo prefilter "
                "sigma %.2f px", size, size, 100.0 * np.mean(weight > 0),
                100.0 * np.mean((weight <= 0) & (mirror_w > 0)), sigma)
    return BakedTexture(
        image=image,
        visible=(w_img > 0).reshape(size, size),
        filled_from_mirror=mirror_used.reshape(size, size),
        covered=covered.reshape(size, size),
        weight=w_img.reshape(size, size),
        skin_tone=skin,
    )


def blender_pixels(image: np.ndarray) -> np.ndarray:
    """Flatten a top-row-first (S, S, 3) or (S, S, 4) image into Blender's ``Image.pixels`` layout.

    Returns
    -------
    np.ndarray
        (S · S · 4,) float32 RGBA, bottom row first (alpha 1 when the input has no alpha).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise Pixel3DMMError("Pass an (H, W, 3) or (H, W, 4) image to convert it for Blender.")
    if img.shape[2] == 3:
        img = np.concatenate([img, np.ones(img.shape[:2] + (1,), dtype=np.float32)], axis=2)
    return np.ascontiguousarray(img[::-1]).reshape(-1)


def bake_from_fit(photo_rgb: np.ndarray, fit_result, uv_template, **options) -> BakedTexture:
    """Bake the photo for a fit: ``bake_texture`` with the fit's posed vertices and photo intrinsics.

    Parameters
    ----------
    photo_rgb : np.ndarray
        (H, W, 3) full photo the fit was made from.
    fit_result : core.fit.FitResult
        Uses ``vertices_posed`` (V, 3) and ``K_photo`` (3, 3).
    uv_template : core.flame.UVTemplate
        Uses ``faces``, ``corner_uv`` and ``mirror_index``.
    **options
        Further keyword arguments of :func:`bake_texture` (``size``, ``skin_mask``, ...).
    """
    return bake_texture(
        photo_rgb, fit_result.vertices_posed, uv_template.faces, uv_template.corner_uv, fit_result.K_photo,
        mirror_index=uv_template.mirror_index, **options,
    )
