"""Loss terms of the fit: pure functions of tensors, each returning a scalar before weighting.

Reductions follow the reference's "mask, then mean" pattern: masked-out pixels or vertices count as zeros in
the mean over the whole image or vertex set (so terms with few valid samples weigh less).
"""

from __future__ import annotations

import torch

__all__ = [
    "match_uv",
    "uv_correspondence",
    "dense_uv",
    "normal_loss",
    "silhouette_loss",
    "mirror_offsets",
    "gaussian_blur",
    "sample_nearest",
]

_MATCH_CHUNK = 256


def match_uv(vertex_uv: torch.Tensor, pred_uv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest predicted pixel in UV space for each vertex (the reference's K=1 ``knn_points``).

    Parameters
    ----------
    vertex_uv : (N, 2) canonical vertex UVs (network convention)
    pred_uv : (S, S, 2) predicted UV map
    mask : (S, S) bool, pixels that may be matched

    Returns
    -------
    target_xy : (N, 2) pixel centre of the nearest pixel (x, y), zero when no pixel is valid
    sq_dist : (N,) squared UV distance, +inf when no pixel is valid
    """
    size_w = pred_uv.shape[1]
    idx = mask.reshape(-1).nonzero().squeeze(1)
    n = vertex_uv.shape[0]
    if idx.numel() == 0:
        return vertex_uv.new_zeros(n, 2), vertex_uv.new_full((n,), float("inf"))
    pix_uv = pred_uv.reshape(-1, 2)[idx]
    best_d = []
    best_i = []
    for start in range(0, n, _MATCH_CHUNK):
        # the nearest distance squared afterwards (squaring the whole distance matrix cost a third of the match)
        dmin, imin = torch.cdist(vertex_uv[start : start + _MATCH_CHUNK], pix_uv).min(1)
        best_d.append(dmin)
        best_i.append(imin)
    sq = torch.cat(best_d).square()
    flat = idx[torch.cat(best_i)]
    xy = torch.stack([(flat % size_w).to(vertex_uv.dtype) + 0.5, torch.div(flat, size_w, rounding_mode="floor").to(vertex_uv.dtype) + 0.5], -1)
    return xy, sq


def sample_nearest(image: torch.Tensor, xy: torch.Tensor, fill: float) -> torch.Tensor:
    """Values of an (S, S) image at the pixels containing points ``xy`` (N, 2); ``fill`` outside the image."""
    h, w = image.shape
    ix = torch.floor(xy[:, 0]).long()
    iy = torch.floor(xy[:, 1]).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    vals = image[iy.clamp(0, h - 1), ix.clamp(0, w - 1)]
    return torch.where(inside, vals, torch.full_like(vals, fill))


def uv_correspondence(
    xy: torch.Tensor,
    depth: torch.Tensor,
    target_xy: torch.Tensor,
    matched: torch.Tensor,
    depth_map: torch.Tensor,
    size: int,
    max_px: float,
    visibility_eps: float,
    squared: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UV -> 2D vertex correspondence loss with the reference's acceptance tests.

    Parameters
    ----------
    xy : (N, 2) projected vertices in pixels at S; depth : (N,) their camera distances
    target_xy : (N, 2) matched pixel centres; matched : (N,) bool, UV distance test passed
    depth_map : (S, S) rendered camera distance (+inf on background), no gradient needed
    size : S (pixel offsets are normalised by it)
    max_px : largest L1 pixel distance accepted (re-checked every call)
    visibility_eps : a vertex is visible when ``depth < rendered depth + eps``
    squared : True for the mean of squared offsets (reference ``uv_l2``), False for the L1 form

    Returns
    -------
    loss : scalar tensor
    accepted : (N,) bool
    """
    delta = (xy - target_xy) / size
    with torch.no_grad():
        near = (xy - target_xy).abs().sum(-1) < max_px
        visible = depth < sample_nearest(depth_map, xy, float("inf")) + visibility_eps
        accepted = matched & near & visible
    per = delta.square() if squared else delta.abs()
    loss = (per.mean(-1) * accepted.to(per.dtype)).mean()
    return loss, accepted


def dense_uv(
    pred_uv: torch.Tensor,
    uv_mask: torch.Tensor,
    rendered_uv: torch.Tensor,
    coverage: torch.Tensor,
    max_dist: float | None = None,
) -> torch.Tensor:
    """Mean over pixels and channels of ``(pred - rendered)^2`` on predicted-and-rendered pixels.

    ``max_dist``: pixels whose UV distance reaches it are ignored (None keeps every pixel, as the reference).
    Such pixels show a different part of the UV layout than predicted (an eyeball seen through the lid, the far
    side of a UV seam); their squared error dwarfs the rest and their gradient only slides that part's texture.
    """
    sq = (pred_uv - rendered_uv).square()
    m = uv_mask.to(rendered_uv.dtype) * coverage
    if max_dist is not None:
        m = m * (sq.detach().sum(-1) < max_dist * max_dist).to(m.dtype)
    return (sq * m[..., None]).mean()


def normal_loss(
    pred_n: torch.Tensor,
    normal_mask: torch.Tensor,
    rendered_n: torch.Tensor,
    coverage: torch.Tensor,
    eye_damping: torch.Tensor,
    delta_n: float,
) -> torch.Tensor:
    """L1 normal loss; pixels whose mean absolute error reaches ``delta_n`` are ignored.

    Parameters
    ----------
    pred_n, rendered_n : (S, S, 3) unit normals in the FLAME canonical frame
    normal_mask, coverage : (S, S) float
    eye_damping : (S, S) weights in [0, 1] (1 - blurred eye mask)
    """
    err = (pred_n - rendered_n).abs()
    with torch.no_grad():
        keep = (err.mean(-1) < delta_n).to(err.dtype) * normal_mask * coverage * eye_damping
    return (err * keep[..., None]).mean()


def silhouette_loss(fg_mask: torch.Tensor, rendered_fg: torch.Tensor, valid_bg: torch.Tensor) -> torch.Tensor:
    """Mean of ``|fg_mask - rendered|`` over the image, counted on background/neck pixels only."""
    return ((fg_mask - rendered_fg).abs() * valid_bg).mean()


def mirror_offsets(vertices: torch.Tensor, mirror_index: torch.Tensor) -> torch.Tensor:
    """(V, 3) offset of each vertex from its mirror vertex reflected through x = 0 (metres).

    Parameters
    ----------
    vertices : (V, 3) unposed shape + expression mesh; mirror_index : (V,) long
    """
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    return vertices - vertices.index_select(0, mirror_index) * flip


def gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (S, S) image with zero padding.

    Only the bounding box of the non-zero pixels, grown by the kernel radius, is convolved: everything outside it
    blurs to exactly zero (the eye mask it is used for covers a small part of the image).
    """
    half = size // 2
    rows = image.ne(0).any(1).nonzero().squeeze(1)
    cols = image.ne(0).any(0).nonzero().squeeze(1)
    out = torch.zeros_like(image)
    if rows.numel() == 0:
        return out
    h, w = image.shape
    y0, y1 = max(int(rows[0]) - half, 0), min(int(rows[-1]) + half + 1, h)
    x0, x1 = max(int(cols[0]) - half, 0), min(int(cols[-1]) + half + 1, w)
    x = torch.arange(-half, half + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = image[None, None, y0:y1, x0:x1]
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1), padding=(0, half))
    img = torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1), padding=(half, 0))
    out[y0:y1, x0:x1] = img[0, 0]
    return out
