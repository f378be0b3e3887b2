"""UV template: OBJ reading, per-corner/per-vertex UVs, mirror index, and the synthetic layout's injectivity."""

import numpy as np
import pytest

from core.errors import AssetInvalidError, AssetMissingError
from core.flame import UVTemplate, load_uv_template, mirror_vertex_index, synthetic_flame
from core.flame.uv import write_obj


@pytest.fixture(scope="module")
def small():
    return synthetic_flame("small", seed=0)


def test_obj_round_trip_and_conventions(small, tmp_path):
    data, template = small
    path = write_obj(tmp_path / "head_template.obj", template)
    loaded = load_uv_template(path)
    np.testing.assert_allclose(loaded.vertices, data.v_template, atol=1e-8)
    np.testing.assert_array_equal(loaded.faces, data.faces)
    np.testing.assert_allclose(loaded.uv, template.uv, atol=1e-8)
    assert loaded.corner_uv.shape == (len(data.faces), 3, 2)
    # Independent per-vertex UV: walk the faces in order, the last corner wins, then flip v.
    want = np.zeros((len(data.v_template), 2))
    for tri, uv_tri in zip(loaded.faces.tolist(), loaded.uv_faces.tolist()):
        for vi, ti in zip(tri, uv_tri):
            want[vi] = loaded.uv[ti]
    want[:, 1] = 1.0 - want[:, 1]
    np.testing.assert_array_equal(loaded.vertex_uv, want)
    corner = loaded.corner_uv
    np.testing.assert_array_equal(corner[5, 1], loaded.uv[loaded.uv_faces[5, 1]])


def test_mirror_index_matches_brute_force(small):
    _, template = small
    rng = np.random.default_rng(0)
    noisy = template.vertices + rng.normal(scale=1e-4, size=template.vertices.shape)
    index, residual = mirror_vertex_index(noisy)
    reflected = noisy * [-1, 1, 1]
    dist = np.linalg.norm(reflected[:, None] - noisy[None], axis=-1)
    np.testing.assert_array_equal(index, dist.argmin(1))
    assert residual == pytest.approx(dist.min(1).max())
    # The synthetic head is exactly symmetric: the index is an involution with zero residual.
    assert template.mirror_residual < 1e-12
    np.testing.assert_array_equal(template.mirror_index[template.mirror_index], np.arange(len(template.vertices)))
    side = np.abs(template.vertices[:, 0]) > 1e-6
    assert np.all(np.sign(template.vertices[template.mirror_index[side], 0]) == -np.sign(template.vertices[side, 0]))
    u = template.vertex_uv[:, 0]
    assert template.uv_mirror_axis == pytest.approx(np.mean((u + u[template.mirror_index]) / 2))


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def test_synthetic_uv_layout_is_injective_and_symmetric(small):
    data, template = small
    tri = template.corner_uv  # (F, 3, 2)
    assert tri.min() >= 0 and tri.max() <= 1
    area = _cross2(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(area > 0)  # no flipped triangles
    g = (np.arange(100) + 0.5) / 100
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    hits = np.zeros(len(pts), dtype=int)
    for start in range(0, len(tri), 64):
        t = tri[start : start + 64]
        a, b, c = t[:, None, 0], t[:, None, 1], t[:, None, 2]
        p = pts[None]
        w0 = _cross2(b - a, p - a)
        w1 = _cross2(c - b, p - b)
        w2 = _cross2(a - c, p - c)
        hits += ((w0 > 1e-12) & (w1 > 1e-12) & (w2 > 1e-12)).sum(0)
    assert hits.max() == 1  # every UV point belongs to at most one triangle
    assert hits.mean() > 0.5
    # Face front in the middle; the subject's left (+x) at u > 0.5; mirror pairs symmetric about u = 0.5.
    v = data.v_template
    front = np.argmax(np.where(np.abs(v[:, 0]) < 1e-9, v[:, 2], -np.inf))
    assert template.vertex_uv[front, 0] == pytest.approx(0.5)
    left = v[:, 0] > 0.01
    assert np.all(template.vertex_uv[left, 0] > 0.5)
    pairs = template.mirror_index != np.arange(len(v))
    np.testing.assert_allclose(
        template.vertex_uv[pairs, 0] + template.vertex_uv[template.mirror_index[pairs], 0], 1.0, atol=1e-12
    )


def test_bad_obj_files(tmp_path):
    with pytest.raises(AssetMissingError):
        load_uv_template(tmp_path / "nope.obj")
    no_uv = tmp_path / "no_uv.obj"
    no_uv.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    quad = tmp_path / "quad.obj"
    quad.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\n")
    binary = tmp_path / "bin.obj"
    binary.write_bytes(bytes(range(128, 256)))
    for path in (no_uv, quad, binary):
        with pytest.raises(AssetInvalidError, match="UV template"):
            load_uv_template(path)
    with pytest.raises(AssetInvalidError, match="missing"):
        UVTemplate.from_arrays(np.zeros((3, 3)), np.array([[0, 1, 3]]), np.zeros((3, 2)), np.array([[0, 1, 2]]), "x")


@pytest.mark.parametrize("members, chosen", [
    ({"pixel3dmm-master/assets/head_template.obj": "head", "pixel3dmm-master/README.md": "text",
      "pixel3dmm-master/tests/head_template.obj": "other"}, "pixel3dmm-master/assets/head_template.obj"),
    ({"FLAME_texture.npz": "text", "head_template_mesh.obj": "head"}, "head_template_mesh.obj"),
])
def test_uv_template_zips_are_read_in_place(small, tmp_path, members, chosen):
    import zipfile

    _, template = small
    head = write_obj(tmp_path / "a.obj", template).read_bytes()
    other = write_obj(tmp_path / "b.obj", synthetic_flame("small", seed=3)[1]).read_bytes()
    payload = {"head": head, "other": other, "text": b"not an OBJ"}
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, kind in members.items():
            z.writestr(name, payload[kind])
    loaded = load_uv_template(archive)
    direct = load_uv_template(tmp_path / "a.obj")
    np.testing.assert_array_equal(loaded.uv, direct.uv)
    np.testing.assert_array_equal(loaded.vertices, direct.vertices)
    assert loaded.source == f"{archive}/{chosen}"


def test_uv_template_zip_without_the_template(tmp_path):
    import zipfile

    archive = tmp_path / "TextureSpace.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("FLAME_texture.npz", b"x")
    with pytest.raises(AssetInvalidError, match="holds no head_template.obj; choose"):
        load_uv_template(archive)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[:30])
    with pytest.raises(AssetInvalidError, match="damaged or incomplete"):
        load_uv_template(cut)
