"""Linear blend skinning with pose correctives, as FLAME defines it (pure functions, no state).

Shape letters: ``B`` batch, ``V`` vertices, ``J`` joints, ``K`` blendshape components, ``L`` landmarks.
Every function takes its device and dtype from its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Linear combination of blendshapes.

    Parameters
    ----------
    coeffs : (B, K) coefficients.
    dirs : (V, 3, K) blendshape basis.

    Returns
    -------
    (B, V, 3) offsets ``sum_k coeffs[b, k] * dirs[:, :, k]``.
    """
    v, c, k = dirs.shape
    # linear() takes the (V * 3, K) basis as the transposed operand natively; ``coeffs @ basis.T`` copies the
    # basis under torch.func.vmap (the Levenberg-Marquardt Jacobian), half the cost of the product.
    return torch.nn.functional.linear(coeffs, dirs.reshape(v * c, k)).reshape(coeffs.shape[0], v, c)


def vertices2joints(j_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Regress joint locations from vertices.

    Parameters
    ----------
    j_regressor : (J, V) dense regressor.
    vertices : (B, V, 3).

    Returns
    -------
    (B, J, 3) joint locations.
    """
    b, v, c = vertices.shape
    flat = vertices.transpose(0, 1).reshape(v, b * c)
    return (j_regressor @ flat).reshape(-1, b, c).transpose(0, 1)


def pose_feature(rot_mats: torch.Tensor) -> torch.Tensor:
    """FLAME's pose-corrective feature: flattened ``R_j - I`` of all joints except the root.

    Parameters
    ----------
    rot_mats : (B, J, 3, 3) local joint rotations.

    Returns
    -------
    (B, 9 * (J - 1)) features, joint-major then row-major within each matrix (36 values for FLAME).
    """
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).reshape(rot_mats.shape[0], -1)


def batch_rigid_transform(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk the kinematic chain.

    Parameters
    ----------
    rot_mats : (B, J, 3, 3) local rotations of each joint about its rest location.
    joints : (B, J, 3) rest joint locations.
    parents : length-J sequence of parent indices, ``-1`` for the root; every parent precedes its child.

    Returns
    -------
    world : (B, J, 4, 4) world transform of each joint frame: rotation = accumulated rotation, translation =
        posed joint location.
    skinning : (B, J, 4, 4) transforms that carry a rest-pose point rigidly attached to joint j to its posed
        location (``world_j`` composed with a translation by ``-joints_j``).
    """
    b, j = joints.shape[:2]
    bottom = torch.zeros(b, 1, 4, dtype=joints.dtype, device=joints.device)
    bottom[..., 3] = 1.0
    world: list[torch.Tensor] = []
    for i, parent in enumerate(parents):
        offset = joints[:, i] if parent < 0 else joints[:, i] - joints[:, parent]
        local = torch.cat((torch.cat((rot_mats[:, i], offset[..., None]), dim=-1), bottom), dim=-2)
        world.append(local if parent < 0 else world[parent] @ local)
    world_t = torch.stack(world, dim=1)
    rest_shift = world_t[..., :3, :3] @ joints[..., None]
    skinning = torch.cat(
        (torch.cat((world_t[..., :3, :3], world_t[..., :3, 3:] - rest_shift), dim=-1), world_t[..., 3:, :]),
        dim=-2,
    )
    return world_t, skinning


def lbs(
    coeffs: torch.Tensor,
    rot_mats: torch.Tensor,
    v_template: torch.Tensor,
    dirs: torch.Tensor,
    posedirs: torch.Tensor,
    j_template: torch.Tensor,
    j_dirs: torch.Tensor,
    parents: Sequence[int],
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blendshapes, pose correctives and linear blend skinning.

    Parameters
    ----------
    coeffs : (B, K) or (1, K) identity and expression coefficients, in the column order of ``dirs``.
    rot_mats : (B, J, 3, 3) local joint rotations.
    v_template : (V, 3) template vertices.
    dirs : (V, 3, K) identity and expression blendshapes.
    posedirs : (V, 3, 9 * (J - 1)) pose correctives.
    j_template : (J, 3) the joint regressor applied to the template; j_dirs : (J, 3, K) applied to the blendshapes
        (so the joints need no vertices: ``J_regressor @ (v_template + dirs @ coeffs)`` regressed in advance, as
        smplx does).
    parents : length-J parent indices (``-1`` for the root).
    weights : (V, J) skinning weights.

    Returns
    -------
    vertices : (B, V, 3) posed vertices.
    joints : (B, J, 3) posed joint locations.
    world : (B, J, 4, 4) world transforms of the joint frames (see :func:`batch_rigid_transform`).
    v_shaped : (B, V, 3) (or (1, V, 3) for coefficients of batch 1) template plus identity and expression offsets,
        unposed.
    """
    v_shaped = v_template + blend_shapes(coeffs, dirs)
    # Coefficients with batch 1 serve every pose in the batch: the blendshapes are formed once.
    rest_joints = (j_template + blend_shapes(coeffs, j_dirs)).expand(rot_mats.shape[0], -1, -1)
    v_posed = v_shaped + blend_shapes(pose_feature(rot_mats), posedirs)
    world, skinning = batch_rigid_transform(rot_mats, rest_joints, parents)
    # Blend the 3x4 joint transforms per vertex with one 2-D matmul, component-major so that each of the 12
    # blended entries is a contiguous (B, V) array, then apply them with elementwise multiply-adds (a batched
    # matmul of V tiny 3x3 matrices, or a broadcast product summed over a size-3 axis, is far slower on the CPU,
    # and more so under torch.func.vmap).
    b, j = rest_joints.shape[:2]
    flat = skinning[:, :, :3, :].permute(2, 3, 0, 1).reshape(12 * b, j)  # rows: entry (r, c), batch
    per_vertex = (flat @ weights.T).view(3, 4, b, -1)  # (3, 4, B, V)
    x, y, z = v_posed.permute(2, 0, 1)  # each (B, V)
    rows = [torch.addcmul(torch.addcmul(torch.addcmul(m[3], m[0], x), m[1], y), m[2], z) for m in per_vertex]
    vertices = torch.stack(rows, -1)
    return vertices, world[..., :3, 3], world, v_shaped


def vertices2landmarks(
    vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """Landmarks as barycentric points on mesh triangles.

    Parameters
    ----------
    vertices : (B, V, 3).
    faces : (F, 3) int64 triangle vertex indices.
    face_idx : (L,) int64 triangle of each landmark.
    bary : (L, 3) barycentric coordinates.

    Returns
    -------
    (B, L, 3) landmark positions.
    """
    corners = vertices[:, faces[face_idx]]  # (B, L, 3, 3)
    return (corners * bary.to(vertices.dtype)[None, :, :, None]).sum(-2)
