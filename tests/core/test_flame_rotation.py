"""Rotation conversions against formulas written independently here."""

import math

import numpy as np
import pytest
import torch

from core.flame import (
    as_rotation_matrix,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)


def _rodrigues_np(aa):
    theta = np.linalg.norm(aa)
    if theta == 0:
        return np.eye(3)
    k = aa / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return math.cos(theta) * np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * np.outer(k, k)


def _random_axis_angle(rng, n, max_angle):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, max_angle, size=(n, 1))


def test_axis_angle_matches_rodrigues():
    rng = np.random.default_rng(0)
    aa = np.concatenate((_random_axis_angle(rng, 64, math.pi), [[0, 0, 0], [1e-9, 0, 0]]))
    got = axis_angle_to_matrix(torch.tensor(aa)).numpy()
    want = np.stack([_rodrigues_np(a) for a in aa])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_axis_angle_round_trip_and_near_pi():
    rng = np.random.default_rng(1)
    aa = _random_axis_angle(rng, 128, math.pi - 1e-3)
    aa = np.concatenate((aa, [[0, 0, 1e-8], [0, 0, 0]]))
    back = matrix_to_axis_angle(axis_angle_to_matrix(torch.tensor(aa))).numpy()
    np.testing.assert_allclose(back, aa, atol=1e-9)
    # Exactly pi: the axis sign is ambiguous, the matrix is not.
    half = math.pi / math.sqrt(2)
    pi_rot = torch.tensor([[0.0, math.pi, 0.0], [half, half, 0.0]], dtype=torch.float64)
    mats = axis_angle_to_matrix(pi_rot)
    np.testing.assert_allclose(axis_angle_to_matrix(matrix_to_axis_angle(mats)).numpy(), mats.numpy(), atol=1e-9)


def test_6d_is_first_two_columns_and_round_trips():
    rng = np.random.default_rng(2)
    mats = torch.tensor(np.stack([_rodrigues_np(a) for a in _random_axis_angle(rng, 32, math.pi)]))
    r6 = matrix_to_rotation_6d(mats)
    np.testing.assert_array_equal(r6[:, :3].numpy(), mats[:, :, 0].numpy())
    np.testing.assert_array_equal(r6[:, 3:].numpy(), mats[:, :, 1].numpy())
    np.testing.assert_allclose(rotation_6d_to_matrix(r6).numpy(), mats.numpy(), atol=1e-12)
    # Arbitrary 6D vectors give proper rotations whose first column is the normalised first vector.
    raw = torch.tensor(rng.normal(size=(32, 6)))
    r = rotation_6d_to_matrix(raw).numpy()
    np.testing.assert_allclose(r.transpose(0, 2, 1) @ r, np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    first = raw[:, :3].numpy() / np.linalg.norm(raw[:, :3].numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(r[:, :, 0], first, atol=1e-12)


def test_gradients_are_finite_at_zero_rotation():
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    (axis_angle_to_matrix(aa) * torch.arange(9.0, dtype=torch.float64).reshape(3, 3)).sum().backward()
    assert torch.isfinite(aa.grad).all()
    # d R / d aa at 0 is the skew matrix, so grad of sum(W * R) is (W32 - W23, W13 - W31, W21 - W12).
    np.testing.assert_allclose(aa.grad[0].numpy(), [7 - 5, 2 - 6, 3 - 1], atol=1e-12)
    mats = axis_angle_to_matrix(torch.tensor([[1e-9, 0.0, 0.0]], dtype=torch.float64)).requires_grad_(True)
    matrix_to_axis_angle(mats).sum().backward()
    assert torch.isfinite(mats.grad).all()


def test_as_rotation_matrix_dispatches_on_shape():
    aa = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    mat = axis_angle_to_matrix(aa)
    for rep in (aa, matrix_to_rotation_6d(mat), mat):
        np.testing.assert_allclose(as_rotation_matrix(rep).numpy(), mat.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        as_rotation_matrix(torch.zeros(2, 4))
