"""FLAME pickle loading without chumpy/scipy, the .npz cache, bad files, landmark embeddings."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from core.errors import AssetInvalidError, AssetMissingError
from core.flame import (
    FlameData,
    load_eyelids,
    load_flame,
    load_landmark_embedding,
    synthetic_flame,
    write_flame_pickle,
    write_synthetic_flame,
)
from core.flame import io as flame_io

FIELDS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights", "parents")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_synthetic_flame(tmp_path_factory.mktemp("flame"), size="small", seed=1)


@pytest.fixture(scope="module")
def reference():
    return synthetic_flame("small", seed=1)[0]


def _same(a: FlameData, b: FlameData):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_chumpy_style_pickle_really_references_foreign_classes(files):
    text = files["chumpy"].read_bytes()
    assert b"chumpy.ch\nCh" in text and b"scipy.sparse._csc\ncsc_matrix" in text and b"__builtin__\nset" in text
    with pytest.raises((ModuleNotFoundError, ImportError)):
        pickle.loads(text, encoding="latin1")  # a plain unpickler needs chumpy, which is not installed


def test_plain_and_chumpy_pickles_load_to_the_generated_arrays(files, reference, tmp_path):
    plain = load_flame(files["plain"], cache_dir=tmp_path)
    chumpy = load_flame(files["chumpy"], cache_dir=tmp_path)
    _same(plain, reference)
    _same(chumpy, reference)
    assert plain.release == chumpy.release == "synthetic"
    assert (plain.n_shape, plain.n_expr) == (reference.n_shape, reference.n_expr)
    assert plain.faces.dtype == np.int64 and plain.parents.tolist() == [-1, 0, 1, 1, 1]


def test_sparse_regressor_is_rebuilt_exactly(reference):
    dense = reference.J_regressor.copy()
    dense[2, 7] = 0.25  # an extra entry in a column that already has none
    sparse = flame_io._CscWriter(dense)
    stand_in = flame_io._CscStandIn()
    state = {"data": sparse.data, "indices": sparse.indices, "indptr": sparse.indptr, "shape": dense.shape}
    stand_in.__setstate__(state)
    np.testing.assert_array_equal(stand_in.to_array(), dense)


def test_cache_is_reused_then_invalidated(files, tmp_path, monkeypatch):
    src = tmp_path / "generic_model.pkl"
    src.write_bytes(files["plain"].read_bytes())
    calls = []
    real = flame_io.unpickle_bytes
    monkeypatch.setattr(flame_io, "unpickle_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_flame(src, cache_dir=tmp_path / "cache")
    second = load_flame(src, cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    _same(first, second)
    assert first.release == second.release and list((tmp_path / "cache" / "flame").glob("*.npz"))
    # Replace the source with another model (same size, other seed): the cache must not be used.
    other = synthetic_flame("small", seed=2)[0]
    write_flame_pickle(other, src)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    third = load_flame(src, cache_dir=tmp_path / "cache")
    assert len(calls) == 2
    _same(third, other)


def test_default_cache_dir_comes_from_the_environment(files, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXEL3DMM_CACHE_DIR", str(tmp_path / "envcache"))
    load_flame(files["plain"])
    assert list((tmp_path / "envcache" / "flame").glob("*.npz"))


def test_converted_npz_loads_directly(files, reference, tmp_path):
    load_flame(files["plain"], cache_dir=tmp_path)
    (npz,) = (tmp_path / "flame").glob("*.npz")
    _same(load_flame(npz), reference)


def test_eyelids(files, reference, tmp_path):
    data = load_flame(files["plain"], cache_dir=tmp_path, eyelids=(files["eyelid_left"], files["eyelid_right"]))
    np.testing.assert_array_equal(data.eyelids, reference.eyelids)
    bad = tmp_path / "bad_eyelid.npy"
    np.save(bad, np.zeros((5, 3)))
    with pytest.raises(AssetInvalidError, match="shape"):
        load_eyelids(bad, bad, n_vertices=reference.n_vertices)


def test_eyelids_beside_the_model_are_found(files, reference, tmp_path):
    """FLAME's pickles carry no eyelids; metrical-tracker and Pixel3DMM keep l_eyelid.npy / r_eyelid.npy with the
    model, so the default load takes them from beside the model file (both, or none)."""
    folder = tmp_path / "flame"
    folder.mkdir()
    model = folder / "generic_model.pkl"
    model.write_bytes(files["plain"].read_bytes())
    cache = tmp_path / "cache"
    assert load_flame(model, cache_dir=cache).eyelids is None
    (folder / "l_eyelid.npy").write_bytes(files["eyelid_left"].read_bytes())
    assert load_flame(model, cache_dir=cache).eyelids is None  # one of the two: none
    (folder / "r_eyelid.npy").write_bytes(files["eyelid_right"].read_bytes())
    np.testing.assert_array_equal(load_flame(model, cache_dir=cache).eyelids, reference.eyelids)
    assert load_flame(model, cache_dir=cache, eyelids=None).eyelids is None
    np.save(folder / "r_eyelid.npy", np.zeros((5, 3)))
    with pytest.raises(AssetInvalidError, match="shape"):
        load_flame(model, cache_dir=cache)


def test_release_detection(reference, tmp_path):
    raw = flame_io.flame_dict(reference)
    del raw[flame_io._SYNTHETIC_KEY]
    for name, extra, want, n_expr in (
        ("generic_model.pkl", {}, "2020", 30),  # no metadata: the last min(100, K) columns are expression
        ("flame2023_no_jaw.pkl", {}, "2023", 30),
        ("flame2023_Open.pkl", {"supr_expression_metadata": {"n_expr": 10}}, "2023 Open", 10),
    ):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({**raw, **extra}, protocol=2))
        data = load_flame(path, cache_dir=tmp_path / "c")
        assert (data.release, data.n_expr, data.n_shape) == (want, n_expr, 30 - n_expr)
    assert data.describe().startswith("FLAME 2023 Open: ")


def _write(path, payload: bytes):
    path.write_bytes(payload)
    return path


def test_bad_files_get_one_clear_message(files, reference, tmp_path):
    html = b"<!DOCTYPE html>\n<html><head><title>FLAME</title></head><body>Please log in</body></html>" * 80
    cases = {
        "web page": _write(tmp_path / "html.pkl", html),
        "truncated": _write(tmp_path / "cut.pkl", files["plain"].read_bytes()[:5000]),
        "holds a list": _write(tmp_path / "list.pkl", pickle.dumps([1, 2, 3])),
        "lacks": _write(tmp_path / "dict.pkl", pickle.dumps({"v_template": np.zeros((4, 3))})),
        "damaged or not a pickle": _write(tmp_path / "noise.pkl", bytes(range(256)) * 4),
    }
    wrong = flame_io.flame_dict(reference)
    wrong["posedirs"] = wrong["posedirs"][..., :20]
    cases["'posedirs' of shape"] = _write(tmp_path / "shape.pkl", pickle.dumps(wrong, protocol=2))
    for message, path in cases.items():
        with pytest.raises(AssetInvalidError, match=message) as info:
            load_flame(path, cache_dir=tmp_path / "c")
        assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
    with pytest.raises(AssetMissingError):
        load_flame(tmp_path / "missing.pkl", cache_dir=tmp_path / "c")


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("layout, chosen", [
    ({"FLAME2020/generic_model.pkl": "plain", "FLAME2020/female_model.pkl": "other",
      "FLAME2020/male_model.pkl": "other", "FLAME2020/Readme.pdf": None}, "FLAME2020/generic_model.pkl"),
    ({"flame2023_no_jaw.pkl": "other", "flame2023.pkl": "plain"}, "flame2023.pkl"),
    ({"FLAME2023Open/flame2023_Open.pkl": "plain", "FLAME2023Open/FLAME2023_Open Readme.pdf": None},
     "FLAME2023Open/flame2023_Open.pkl"),
])
def test_flame_download_zips_are_read_in_place(files, reference, tmp_path, layout, chosen):
    other = tmp_path / "other.pkl"
    write_flame_pickle(synthetic_flame("small", seed=7)[0], other)
    payload = {"plain": files["chumpy"].read_bytes(), "other": other.read_bytes(), None: b"%PDF-1.5 readme"}
    archive = _zip(tmp_path / "download.zip", {name: payload[kind] for name, kind in layout.items()})
    data = load_flame(archive, cache_dir=tmp_path / "c")
    _same(data, reference)  # the chosen member, not one of the others
    assert data.source == str(archive / chosen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "download.zip", "other.pkl"]  # nothing extracted
    assert list((tmp_path / "c" / "flame").glob("*.npz"))
    _same(flame_io.read_flame(archive), reference)


def test_flame_zip_cache_is_reused(files, reference, tmp_path, monkeypatch):
    archive = _zip(tmp_path / "FLAME2020.zip", {"generic_model.pkl": files["plain"].read_bytes()})
    calls = []
    real = flame_io.unpickle_bytes
    monkeypatch.setattr(flame_io, "unpickle_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_flame(archive, cache_dir=tmp_path / "c")
    _same(load_flame(archive, cache_dir=tmp_path / "c"), reference)
    assert len(calls) == 1


def test_bad_flame_zips_get_one_sentence(files, tmp_path):
    cases = {
        "holds no FLAME model": _zip(tmp_path / "TextureSpace.zip", {"FLAME_texture.npz": b"PK..", "Readme.pdf": b"x"}),
        "damaged or incomplete zip": tmp_path / "cut.zip",
        "damaged or not a pickle": _zip(tmp_path / "junk.zip", {"generic_model.pkl": b"not here"}),
        "truncated": _zip(tmp_path / "short.zip", {"flame2023.pkl": files["plain"].read_bytes()[:4000]}),
        "which a FLAME file never contains": _zip(
            tmp_path / "evil.zip", {"generic_model.pkl": b"cos\nsystem\n(S'true'\ntR."}),
    }
    whole = _zip(tmp_path / "whole.zip", {"generic_model.pkl": files["plain"].read_bytes()}).read_bytes()
    cases["damaged or incomplete zip"].write_bytes(whole[: len(whole) // 2])
    for message, path in cases.items():
        for reader in (lambda p: load_flame(p, cache_dir=tmp_path / "c"), flame_io.read_flame):
            with pytest.raises(AssetInvalidError, match=message) as info:
                reader(path)
            assert str(info.value).count("; ") == 1 and str(info.value).endswith(".")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pkl", pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(AssetInvalidError, match="system"):
        load_flame(path, cache_dir=tmp_path / "c")
    assert not marker.exists()
    eval_payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(AssetInvalidError, match="builtins.eval"):
        load_flame(_write(tmp_path / "eval.pkl", eval_payload), cache_dir=tmp_path / "c")


def test_landmark_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 700, size=(1, 68))
    bary = rng.dirichlet(np.ones(3), size=(1, 68)).astype(np.float32)
    table = {
        "static_lmk_faces_idx": torch.arange(51),
        "static_lmk_bary_coords": torch.rand(51, 3),
        "dynamic_lmk_faces_idx": torch.zeros(79, 17, dtype=torch.long),
        "dynamic_lmk_bary_coords": torch.rand(79, 17, 3),
        "full_lmk_faces_idx": faces,
        "full_lmk_bary_coords": bary,
    }
    path68 = tmp_path / "landmark_embedding.npy"
    np.save(path68, np.array(table, dtype=object), allow_pickle=True)
    emb = load_landmark_embedding(path68)
    assert emb.kind == "68"
    np.testing.assert_array_equal(emb.landmark_indices, np.arange(68))  # iBUG ids
    np.testing.assert_array_equal(emb.face_idx, faces[0])
    np.testing.assert_allclose(emb.bary, bary[0])

    mp = tmp_path / "mediapipe_landmark_embedding.npz"
    idx = rng.integers(0, 468, size=105)
    face_idx = faces[0, :1].repeat(105).astype(np.uint32)
    np.savez(mp, lmk_face_idx=face_idx, lmk_b_coords=np.full((105, 3), 1 / 3), landmark_indices=idx)
    emb = load_landmark_embedding(mp)
    assert emb.kind == "mediapipe" and emb.face_idx.shape == (105,)
    np.testing.assert_array_equal(emb.landmark_indices, idx)

    ring = tmp_path / "flame_static_embedding.pkl"  # RingNet (protocol 2, like the file): iBUG 17-67
    with ring.open("wb") as f:
        pickle.dump({"lmk_face_idx": faces[0, :51].astype(np.int64), "lmk_b_coords": bary[0, :51].astype(np.float64)},
                    f, protocol=2)
    emb = load_landmark_embedding(ring)
    assert emb.kind == "68"
    np.testing.assert_array_equal(emb.landmark_indices, np.arange(17, 68))
    np.testing.assert_array_equal(emb.face_idx, faces[0, :51])
    np.testing.assert_allclose(emb.bary, bary[0, :51])

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"full_lmk_faces_idx": _Evil(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(AssetInvalidError, match="system"):
        load_landmark_embedding(evil)
    assert not marker.exists()
    with pytest.raises(AssetInvalidError, match="landmark embedding"):
        load_landmark_embedding(_write(tmp_path / "x.npy", b"hello"))
