"""Rotation representations, converted in one place.

Conventions
-----------
- Axis-angle: ``(..., 3)`` vector whose direction is the rotation axis and whose norm is the angle in radians.
- 6D (Zhou et al., CVPR 2019, "On the Continuity of Rotation Representations"): the first two **columns** of the
  rotation matrix, concatenated: ``r6 = (R[:, 0], R[:, 1])``. The identity is ``(1, 0, 0, 0, 1, 0)``. Note that
  pytorch3d stacks rows instead; transpose a pytorch3d matrix (or swap conventions) when exchanging 6D values.
- Matrices act on column vectors: ``x' = R @ x``.

All functions are differentiable, batched over any leading dimensions and keep the input's device and dtype.
"""

from __future__ import annotations

import torch


def _small_angle_threshold(dtype: torch.dtype) -> float:
    # Below this squared angle the Taylor branches are exact to the dtype's precision.
    return 1e-12 if dtype == torch.float64 else 1e-6


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``[v]_x`` of vectors ``(..., 3)``, shape ``(..., 3, 3)``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).reshape(v.shape + (3,))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula.

    Parameters
    ----------
    axis_angle : (..., 3) tensor, radians.

    Returns
    -------
    (..., 3, 3) rotation matrices. Gradients are finite at the zero rotation.
    """
    theta2 = (axis_angle * axis_angle).sum(-1)
    small = theta2 < _small_angle_threshold(axis_angle.dtype)
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotation_6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of the two column vectors of a 6D rotation.

    Parameters
    ----------
    r6 : (..., 6) tensor ``(c0, c1)``, two (not necessarily orthonormal) column vectors.

    Returns
    -------
    (..., 3, 3) rotation matrices whose first two columns span the same oriented plane as ``c0, c1``.
    """
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """First two columns of ``(..., 3, 3)`` matrices, shape ``(..., 6)``."""
    return torch.cat((matrix[..., :, 0], matrix[..., :, 1]), dim=-1)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`axis_angle_to_matrix` with angles in ``[0, pi]``.

    Goes through a unit quaternion (Shepperd's method: the best-conditioned of four formulas per matrix).

    Parameters
    ----------
    matrix : (..., 3, 3) rotation matrices.

    Returns
    -------
    (..., 3) axis-angle vectors.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    t = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1
    )
    # Candidate quaternions (w, x, y, z), each scaled by 4 * its largest component.
    cand = torch.stack(
        (
            torch.stack((t[..., 0], d21, d02, d10), dim=-1),
            torch.stack((d21, t[..., 1], s10, s02), dim=-1),
            torch.stack((d02, s10, t[..., 2], s21), dim=-1),
            torch.stack((d10, s02, s21, t[..., 3]), dim=-1),
        ),
        dim=-2,
    )
    cand = cand / (2.0 * t.clamp_min(1e-12).sqrt())[..., None]
    best = t.argmax(dim=-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(best.shape[:-1] + (1, 4))).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., 0], q[..., 1:]
    n2 = (xyz * xyz).sum(-1)
    small = n2 < _small_angle_threshold(matrix.dtype)
    n = torch.where(small, torch.ones_like(n2), n2).sqrt()
    angle = 2.0 * torch.atan2(n, w)
    factor = torch.where(small, 2.0 / w, angle / n)
    return xyz * factor[..., None]


def as_rotation_matrix(rotation: torch.Tensor) -> torch.Tensor:
    """Accept any supported representation and return matrices.

    Parameters
    ----------
    rotation : (B, 3) axis-angle, (B, 6) 6D (columns, see module docstring) or (B, 3, 3) matrices.

    Returns
    -------
    (B, 3, 3) rotation matrices.
    """
    if rotation.ndim == 3 and rotation.shape[-2:] == (3, 3):
        return rotation
    if rotation.ndim == 2 and rotation.shape[-1] == 3:
        return axis_angle_to_matrix(rotation)
    if rotation.ndim == 2 and rotation.shape[-1] == 6:
        return rotation_6d_to_matrix(rotation)
    raise ValueError(
        f"A rotation must have shape (B, 3), (B, 6) or (B, 3, 3), got {tuple(rotation.shape)}; reshape it."
    )
