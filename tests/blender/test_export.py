"""GLB and FBX export of a built head: checked with pygltflib, the Khronos glTF validator and re-import."""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
import pygltflib
import pytest

from core.arkit import ARKIT_NAMES
from core.flame.synthetic import synthetic_flame
from core.livelink import Take, read_take, write_take
from core.rig import build_rig
from heads import random_fit
from pixel3dmm_blender import animation, bridge, export, scene

JS_DIR = Path(__file__).resolve().parent / "js"


@pytest.fixture()
def head():
    """Core's synthetic head: at most 3 skin influences per vertex, so glTF's 4 keep the skin exact."""
    flame, uv = synthetic_flame("small", seed=8)
    fit = random_fit(flame, seed=9, eyelids=True)
    texture = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    result = bridge.prepare_result(SimpleNamespace(flame=flame, uv=uv, fit=fit, texture=texture,
                                                   landmark_embedding=None))
    built = scene.build_head(bpy.context, result.rig, name="export", texture=result.texture)
    return flame, fit, built


_DTYPES = {5126: np.float32, 5123: np.uint16, 5121: np.uint8, 5125: np.uint32}
_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def _view_rows(gltf, view_index, offset, dtype, width, count) -> np.ndarray:
    view = gltf.bufferViews[view_index]
    start = (view.byteOffset or 0) + (offset or 0)
    stride = view.byteStride or width * np.dtype(dtype).itemsize
    blob = gltf.binary_blob()
    return np.array([np.frombuffer(blob, dtype, width, start + i * stride) for i in range(count)])


def _accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """An accessor's data as (count, width), sparse accessors included (glTF 2.0 section 3.6.2.3)."""
    accessor = gltf.accessors[index]
    dtype, width = _DTYPES[accessor.componentType], _WIDTHS[accessor.type]
    if accessor.bufferView is None:
        data = np.zeros((accessor.count, width), dtype=dtype)
    else:
        data = _view_rows(gltf, accessor.bufferView, accessor.byteOffset, dtype, width, accessor.count)
    if accessor.sparse is not None:
        sparse = accessor.sparse
        rows = _view_rows(gltf, sparse.indices.bufferView, sparse.indices.byteOffset,
                          _DTYPES[sparse.indices.componentType], 1, sparse.count)[:, 0].astype(int)
        data[rows] = _view_rows(gltf, sparse.values.bufferView, sparse.values.byteOffset, dtype, width, sparse.count)
    return data


def _node_worlds(gltf: pygltflib.GLTF2) -> list[np.ndarray]:
    local = []
    for node in gltf.nodes:
        if node.matrix:
            m = np.array(node.matrix, dtype=np.float64).reshape(4, 4).T
        else:
            x, y, z, w = node.rotation or (0.0, 0.0, 0.0, 1.0)
            r = np.array([
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ])
            m = np.eye(4)
            m[:3, :3] = r * np.array(node.scale or (1.0, 1.0, 1.0))
            m[:3, 3] = node.translation or (0.0, 0.0, 0.0)
        local.append(m)
    parent = {child: i for i, node in enumerate(gltf.nodes) for child in (node.children or [])}

    def world(i):
        return local[i] if i not in parent else world(parent[i]) @ local[i]

    return [world(i) for i in range(len(gltf.nodes))]


def test_glb_has_morph_targets_skin_and_key_values(head, tmp_path):
    flame, fit, built = head
    path = export.export_glb(bpy.context, built.mesh, str(tmp_path / "head"))
    assert path == tmp_path / "head.glb" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.glb"]  # no temporary file left behind
    gltf = pygltflib.GLTF2().load(str(path))
    (mesh,) = gltf.meshes
    names = mesh.extras["targetNames"]
    keys = built.mesh.data.shape_keys.key_blocks
    n_keys = 1 + flame.n_expr + 2 + 36
    assert names == [k.name for k in keys][1:] and len(names) == n_keys
    assert all(len(p.targets) == n_keys for p in mesh.primitives)
    np.testing.assert_allclose(mesh.weights, [keys[n].value for n in names], atol=1e-6)
    (skin,) = gltf.skins
    assert sorted(gltf.nodes[j].name for j in skin.joints) == sorted(scene.BONE_NAMES.values())
    attributes = mesh.primitives[0].attributes
    assert all(getattr(attributes, a) is not None for a in ("JOINTS_0", "WEIGHTS_0", "NORMAL", "TEXCOORD_0"))
    assert len(gltf.images) == 1


def _glb_default_state(gltf: pygltflib.GLTF2) -> np.ndarray:
    """World positions a glTF viewer shows: morph targets at the mesh weights, then skinning by the joint
    nodes' world matrices times the inverse bind matrices (glTF 2.0 spec, section 3.7.3)."""
    (mesh,), (skin,) = gltf.meshes, gltf.skins
    worlds = _node_worlds(gltf)
    inverse_bind = _accessor(gltf, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    joint_matrices = np.stack([worlds[j] @ ibm for j, ibm in zip(skin.joints, inverse_bind)])
    out = []
    for primitive in mesh.primitives:
        positions = _accessor(gltf, primitive.attributes.POSITION).astype(np.float64)
        for weight, target in zip(mesh.weights, primitive.targets):
            positions = positions + weight * _accessor(gltf, target["POSITION"] if isinstance(target, dict)
                                                         else target.POSITION)
        joints = _accessor(gltf, primitive.attributes.JOINTS_0).astype(int)
        weights = _accessor(gltf, primitive.attributes.WEIGHTS_0).astype(np.float64)
        blend = np.einsum("vk,vkab->vab", weights, joint_matrices[joints])
        out.append(np.einsum("vab,vb->va", blend[:, :3, :3], positions) + blend[:, :3, 3])
    return np.concatenate(out)


def _evaluated_world(obj) -> np.ndarray:
    bpy.context.view_layer.update()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    local = np.array([v.co for v in mesh.vertices], dtype=np.float64)
    evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return local @ world[:3, :3].T + world[:3, 3]


def _nearest_distance(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - reference[None, :, :], axis=2).min(axis=1)


def test_glb_shows_the_fitted_head_in_flame_frame(tmp_path):
    flame, uv = synthetic_flame("small", seed=5)
    fit = random_fit(flame, seed=6)
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="frame")
    blender_world = _evaluated_world(built.mesh)
    flame_world = blender_world @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # Z-up -> Y-up
    np.testing.assert_allclose(flame_world, fit.vertices_posed, atol=1e-5)  # the rig check, restated
    path = export.export_glb(bpy.context, built.mesh, str(tmp_path / "frame.glb"))
    shown = _glb_default_state(pygltflib.GLTF2().load(str(path)))
    # the exporter splits vertices along UV seams: match every exported vertex to its nearest fitted vertex
    assert shown.shape[0] >= flame_world.shape[0] and _nearest_distance(shown, flame_world).max() < 1e-5


def test_glb_passes_the_khronos_validator(head, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so the Khronos glTF validator (npm gltf-validator) cannot run")
    if not (JS_DIR / "node_modules" / "gltf-validator").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True)
    _, _, built = head
    path = export.export_glb(bpy.context, built.mesh, str(tmp_path / "head.glb"))
    out = subprocess.run([node, str(JS_DIR / "validate.js"), str(path)], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["numErrors"] == 0, report["errors"]
    assert report["hasMorphTargets"] and report["hasSkins"]


def _reimported(path: Path):
    bpy.ops.wm.read_homefile(use_empty=True)
    if path.suffix == ".glb":
        bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
    else:
        bpy.ops.import_scene.fbx(filepath=str(path))
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    return meshes, armatures


@pytest.mark.parametrize("suffix", [".glb", ".fbx"])
def test_reimport_keeps_keys_values_and_bones(head, tmp_path, suffix):
    _, _, built = head
    keys = {k.name: k.value for k in built.mesh.data.shape_keys.key_blocks[1:]}
    fitted = _evaluated_world(built.mesh)
    writer = export.export_glb if suffix == ".glb" else export.export_fbx
    path = writer(bpy.context, built.mesh, str(tmp_path / f"head{suffix}"))
    meshes, armatures = _reimported(path)
    # the re-imported head shows the fitted pose and expression (drivers are gone, their values stay)
    assert _nearest_distance(_evaluated_world(meshes[0]), fitted).max() < 1e-5
    assert len(meshes) == 1 and len(armatures) == 1
    got = {k.name: k.value for k in meshes[0].data.shape_keys.key_blocks[1:]}
    assert set(got) == set(keys)
    assert max(abs(got[n] - keys[n]) for n in keys) < 1e-3
    assert sorted(b.name for b in armatures[0].data.bones) == sorted(scene.BONE_NAMES.values())  # no leaf bones
    assert sorted(g.name for g in meshes[0].vertex_groups) == sorted(scene.BONE_NAMES.values())


def test_export_writes_only_the_head_and_restores_selection(head, tmp_path):
    _, _, built = head
    other = bpy.data.objects.new("bystander", bpy.data.meshes.new("bystander"))
    bpy.context.scene.collection.objects.link(other)
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj == other)
    bpy.context.view_layer.objects.active = other
    path = export.export_fbx(bpy.context, built.mesh, str(tmp_path / "head.fbx"))
    assert {o.name for o in bpy.context.view_layer.objects if o.select_get()} == {"bystander"}
    assert bpy.context.view_layer.objects.active == other
    meshes, armatures = _reimported(path)
    assert [m.data.shape_keys is not None for m in meshes] == [True] and len(armatures) == 1
    assert not any(o.type == "CAMERA" for o in bpy.data.objects)


def test_failed_export_leaves_no_file(head, tmp_path):
    _, _, built = head

    def broken(tmp):
        Path(tmp).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        export._export(bpy.context, built.mesh, str(tmp_path / "head.glb"), ".glb", broken)
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_rigged_head(tmp_path):
    plain = bpy.data.objects.new("plain", bpy.data.meshes.new("plain"))
    bpy.context.scene.collection.objects.link(plain)
    with pytest.raises(export.ExportError, match="no armature"):
        export.export_glb(bpy.context, plain, str(tmp_path / "x.glb"))


def test_export_operators_find_the_head(head, tmp_path):
    _, _, built = head
    bpy.context.scene.p3dmm.head = built.mesh  # as the reconstruct operator does
    bpy.context.view_layer.objects.active = built.armature  # the rig selected: its head is exported
    assert bpy.ops.pixel3dmm.export_fbx(filepath=str(tmp_path / "a.fbx")) == {"FINISHED"}
    other = bpy.data.objects.new("other", bpy.data.meshes.new("other"))
    bpy.context.scene.collection.objects.link(other)
    bpy.context.view_layer.objects.active = other  # something else active: the last built head
    assert bpy.ops.pixel3dmm.export_glb(filepath=str(tmp_path / "b.glb")) == {"FINISHED"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fbx", "b.glb"]
    bpy.data.objects.remove(built.mesh)
    assert not bpy.ops.pixel3dmm.export_glb.poll() and not bpy.ops.pixel3dmm.export_fbx.poll()


def test_glb_key_times_follow_a_fractional_frame_rate(head, tmp_path):
    """29.97 fps is fps 30 over fps_base 1.001 in Blender; the glTF exporter divides the frames by fps * fps_base,
    which export_glb undoes while it writes."""
    _, _, built = head
    key = built.mesh.data.shape_keys.key_blocks["expression_000"]
    for frame, value in ((1, 0.0), (11, 1.0)):
        key.value = value
        key.keyframe_insert("value", frame=frame)
    render = bpy.context.scene.render
    render.fps, render.fps_base = 30, 1.001
    gltf = pygltflib.GLTF2().load(str(export.export_glb(bpy.context, built.mesh, str(tmp_path / "ntsc.glb"))))
    (animation,) = gltf.animations
    times = _accessor(gltf, animation.samplers[0].input)[:, 0]
    np.testing.assert_allclose(times, np.arange(11) * 1.001 / 30, atol=1e-6)
    assert (render.fps, render.fps_base) == (30, pytest.approx(1.001, abs=1e-7))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exports_get_the_users_normal_file_mode(head, tmp_path, umask):
    """A new file is 0666 less the umask, as any program's; owner-only 0600 would hide it from the team."""
    _, _, built = head
    previous = os.umask(umask)
    try:
        paths = [export.export_glb(bpy.context, built.mesh, str(tmp_path / "head.glb")),
                 export.export_fbx(bpy.context, built.mesh, str(tmp_path / "head.fbx"))]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o666 & ~umask] * 2


def test_export_into_a_folder_that_cannot_be_written_is_one_sentence(head, tmp_path, monkeypatch):
    _, _, built = head

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export.os, "open", refuse)  # as for a folder of another user (the tests run as root)
    with pytest.raises(export.ExportError, match=r"Cannot write into the folder .* \(Permission denied\); choose"):
        export.export_glb(bpy.context, built.mesh, str(tmp_path / "head.glb"))


@pytest.fixture()
def animated(arkit_head, tmp_path):
    """The full synthetic head with its ARKit keys, animated by a 40-row Live Link take at 30 fps."""
    flame, uv, embedding = arkit_head
    fit = random_fit(flame, seed=12, max_degrees=15.0)
    texture = np.full((16, 16, 3), 0.5, dtype=np.float32)
    result = bridge.prepare_result(SimpleNamespace(flame=flame, uv=uv, fit=fit, texture=texture,
                                                   landmark_embedding=embedding))
    built = scene.build_head(bpy.context, result.rig, name="animated", texture=result.texture)
    rng = np.random.default_rng(2)
    take = Take.from_frames(rng.uniform(0, 1, (40, 51)), fps=30.0, head=rng.normal(0, 0.2, (40, 3)),
                            eyes=rng.normal(0, 0.1, (40, 2, 3)))
    write_take(tmp_path / "take.csv", take)
    assert bpy.ops.pixel3dmm.import_livelink(filepath=str(tmp_path / "take.csv")) == {"FINISHED"}
    return built, read_take(tmp_path / "take.csv")


def test_animated_glb_carries_the_arkit_keys_and_a_key_per_row(animated, tmp_path):
    built, take = animated
    path = export.export_glb(bpy.context, built.mesh, str(tmp_path / "animated.glb"))
    gltf = pygltflib.GLTF2().load(str(path))
    names = gltf.meshes[0].extras["targetNames"]
    assert names[:52] == list(ARKIT_NAMES) + ["fitted_expression"]
    (animation,) = gltf.animations  # the shape keys' and the armature's actions as one animation
    by_path = {}
    for channel in animation.channels:
        target = "weights" if channel.target.path == "weights" else gltf.nodes[channel.target.node].name
        by_path[target] = animation.samplers[channel.sampler]
    assert {"weights", "neck", "eye.L", "eye.R"} <= set(by_path)
    for sampler in by_path.values():
        assert gltf.accessors[sampler.input].count == len(take.frames)
    times = _accessor(gltf, by_path["weights"].input)[:, 0]
    np.testing.assert_allclose(times, np.arange(40) / 30.0, atol=1e-5)
    weights = _accessor(gltf, by_path["weights"].output).reshape(40, len(names))
    np.testing.assert_allclose(weights[:, :51], take.weights, atol=1e-5)
    np.testing.assert_allclose(weights[:, 51], 0.0)  # fitted_expression keyed to 0 under the take


def test_animated_glb_passes_the_khronos_validator(animated, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so the Khronos glTF validator (npm gltf-validator) cannot run")
    if not (JS_DIR / "node_modules" / "gltf-validator").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True)
    built, _ = animated
    path = export.export_glb(bpy.context, built.mesh, str(tmp_path / "animated.glb"))
    out = subprocess.run([node, str(JS_DIR / "validate.js"), str(path)], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["numErrors"] == 0, report["errors"]
    assert report["hasMorphTargets"] and report["hasSkins"] and report["animationCount"] == 1


def test_animated_fbx_reimports_with_names_and_curves(animated, tmp_path):
    built, take = animated
    path = export.export_fbx(bpy.context, built.mesh, str(tmp_path / "animated.fbx"))
    meshes, armatures = _reimported(path)
    (mesh,) = meshes
    keys = mesh.data.shape_keys
    assert set(ARKIT_NAMES) <= {k.name for k in keys.key_blocks}
    curves = animation.fcurves(keys)
    for name in ("jawOpen", "eyeBlinkLeft", "mouthSmileRight", "browInnerUp"):
        points = curves[(f'key_blocks["{name}"].value', 0)].keyframe_points
        assert len(points) == len(take.frames)
        co = np.array([tuple(p.co) for p in points])
        np.testing.assert_allclose(np.diff(co[:, 0]), 1.0)  # a key per frame (the importer offsets the start)
        np.testing.assert_allclose(co[:, 1], take.weights[:, ARKIT_NAMES.index(name)], atol=1e-4)
    bone_curves = animation.fcurves(armatures[0])
    assert any(path.startswith('pose.bones["neck"]') for path, _ in bone_curves)
