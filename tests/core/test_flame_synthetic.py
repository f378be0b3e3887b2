"""The synthetic FLAME-format head: FLAME's counts and layout, a head-like closed surface, sane rig."""

import numpy as np
import pytest

from core.flame import synthetic_flame


@pytest.fixture(scope="module")
def full():
    return synthetic_flame("full", seed=0)


@pytest.fixture(scope="module")
def small():
    return synthetic_flame("small", seed=0)


def _components(n, faces):
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in faces.tolist():
        for u, v in ((a, b), (b, c)):
            ru, rv = root(u), root(v)
            if ru != rv:
                parent[ru] = rv
    return np.array([root(i) for i in range(n)])


def _boundary_edges(faces):
    edges = np.concatenate((faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]))
    keys, counts = np.unique(np.sort(edges, axis=1), axis=0, return_counts=True)
    assert counts.max() <= 2, "non-manifold edge"
    directed = {tuple(e) for e in edges.tolist()}
    assert len(directed) == len(edges), "inconsistent triangle orientation"
    return keys[counts == 1]


def _signed_volume(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0


def test_full_size_has_flame_counts_and_topology(full):
    data, uv = full
    assert data.v_template.shape == (5023, 3) and data.faces.shape == (9976, 3)
    assert (data.n_shape, data.n_expr) == (300, 100) and data.posedirs.shape == (5023, 3, 36)
    assert uv.uv.shape[0] > 5023  # seams: more texture coordinates than vertices
    boundary = _boundary_edges(data.faces)
    loop = np.unique(boundary)
    assert len(boundary) == 60 and len(loop) == 60  # one neck opening of 60 vertices
    assert np.all(np.bincount(boundary.ravel()) [loop] == 2)
    labels = _components(len(data.v_template), data.faces)
    sizes = sorted(np.bincount(np.unique(labels, return_inverse=True)[1]).tolist())
    assert len(sizes) == 3  # head surface and two eyeballs
    neck_y = data.v_template[loop, 1]
    assert np.ptp(neck_y) < 1e-9 and neck_y[0] == data.v_template[:, 1].min()


def test_surfaces_face_outwards(small):
    data, _ = small
    v, f = data.v_template, data.faces
    for joint in (3, 4):
        eye = data.weights[:, joint] == 1.0
        eye_faces = f[eye[f].all(1)]
        assert _signed_volume(v, eye_faces) > 0
    head_faces = f[(data.weights[:, 3:][f].sum(-1) == 0).all(1)]
    loop = np.unique(_boundary_edges(head_faces))
    centre = v[loop].mean(0)
    # Close the neck with a fan to its centre, oriented from the boundary's own orientation, then measure.
    edges = np.concatenate((head_faces[:, [0, 1]], head_faces[:, [1, 2]], head_faces[:, [2, 0]]))
    undirected = np.sort(edges, axis=1)
    keys, counts = np.unique(undirected, axis=0, return_counts=True)
    open_keys = {tuple(k) for k in keys[counts == 1].tolist()}
    cap = [(b, a) for a, b in edges.tolist() if tuple(sorted((a, b))) in open_keys]
    verts = np.concatenate((v, centre[None]))
    cap_faces = np.array([(a, b, len(v)) for a, b in cap])
    assert _signed_volume(verts, np.concatenate((head_faces, cap_faces))) > 0


def test_looks_like_a_head(full):
    data, _ = full
    v = data.v_template
    height, width, depth = np.ptp(v, axis=0)[[1, 0, 2]]
    assert 0.25 < height < 0.35 and 0.13 < width < 0.18 and 0.18 < depth < 0.26
    nose = np.argmax(v[:, 2])
    assert abs(v[nose, 0]) < 0.01 and -0.05 < v[nose, 1] < 0.03  # nose tip on the midline, face to +z
    joints = data.J_regressor @ v
    np.testing.assert_allclose(data.J_regressor.sum(1), 1.0)
    assert joints[3, 0] > 0.02 and joints[4, 0] < -0.02 and abs(joints[3, 0] + joints[4, 0]) < 1e-12
    assert joints[2, 1] < joints[3, 1] and joints[0, 1] < joints[1, 1] < joints[2, 1]
    assert np.abs(joints[:3, 0]).max() < 1e-12


def test_skinning_weights(full):
    data, _ = full
    w, v = data.weights, data.v_template
    assert w.min() >= 0 and np.abs(w.sum(1) - 1).max() < 1e-12
    eyes = w[:, 3] + w[:, 4] > 0
    assert np.all((w[eyes, 3] == 1) | (w[eyes, 4] == 1))
    chin = np.argmax(np.where(np.abs(v[:, 1] + 0.075) < 0.01, v[:, 2], -np.inf))
    assert w[chin, 2] > 0.5
    top = np.argmax(v[:, 1])
    assert w[top, 1] > 0.99
    assert w[np.argmin(v[:, 1]), 0] > 0.9


def test_blendshapes_are_smooth_and_placed(full):
    data, _ = full
    v, f = data.v_template, data.faces
    edges = np.unique(np.sort(np.concatenate((f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]])), axis=1), axis=0)
    for dirs in (data.shapedirs[..., :10], data.exprdirs[..., :10]):
        jump = np.linalg.norm(dirs[edges[:, 0]] - dirs[edges[:, 1]], axis=1).max()
        assert jump < 0.35 * np.linalg.norm(dirs, axis=1).max()
    identity_rms = np.sqrt((data.shapedirs[..., 0] ** 2).sum(1).mean())
    assert 0.002 < identity_rms < 0.02
    expr = np.linalg.norm(data.exprdirs, axis=1).sum(1)
    back = v[:, 2] < -0.03
    mouth = (v[:, 2] > 0.05) & (np.abs(v[:, 1] + 0.045) < 0.015)
    assert expr[back].max() < 1e-3 * expr[mouth].mean()
    eyes = data.weights[:, 3:].sum(1) > 0
    assert np.abs(data.exprdirs[eyes]).max() == 0 and np.abs(data.posedirs[eyes]).max() == 0
    # Identity moves each eyeball rigidly (one offset per eyeball).
    left = data.weights[:, 3] == 1
    assert np.ptp(data.shapedirs[left], axis=0).max() < 1e-15


def test_identity_is_nearly_symmetric_expressions_are_not(full):
    # Real heads are close to mirror-symmetric; expressions (a wink, a smirk) need not be.
    data, uv = full
    flip = np.array([-1.0, 1.0, 1.0])[None, :, None]

    def antisymmetric_share(dirs):
        reflected = dirs[uv.mirror_index] * flip
        return np.linalg.norm(dirs - reflected) / np.linalg.norm(dirs + reflected)

    assert 0.05 < antisymmetric_share(data.shapedirs) < 0.12  # 0.08 of random fields whose two parts are alike
    assert antisymmetric_share(data.exprdirs) > 0.5


def test_seed_changes_only_the_bases(small):
    data, uv = small
    again, _ = synthetic_flame("small", seed=0)
    other, _ = synthetic_flame("small", seed=5)
    np.testing.assert_array_equal(data.shapedirs, again.shapedirs)
    np.testing.assert_array_equal(data.v_template, other.v_template)
    assert np.abs(data.shapedirs - other.shapedirs).max() > 1e-4
    with pytest.raises(ValueError, match="size"):
        synthetic_flame("huge")
