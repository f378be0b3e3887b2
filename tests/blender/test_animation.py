"""Live Link Face takes and FLAME parameter files through the operators, the Expression panel and its reset, and
the headless --livelink run; checked against the take's own numbers, scipy's rotations and FLAME's forward pass.
"""

from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
import pygltflib
import pytest
from scipy.spatial.transform import Rotation

from core.arkit import ARKIT_NAMES
from core.flame import load_flame, load_uv_template, write_synthetic_flame
from core.flame_params import FlameParameters, load_flame_params, save_flame_params
from core.livelink import Take, read_take, write_take
from core.rig import build_rig
from heads import flame_forward, random_fit, synthetic_head
from pixel3dmm_blender import animation, bridge, expressions, headless, preferences, scene

C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # FLAME Y-up -> Blender Z-up


@pytest.fixture(scope="module")
def model(tmp_path_factory, arkit_head):
    """The full synthetic head written as FLAME files (what the preferences name) and loaded back."""
    files = write_synthetic_flame(tmp_path_factory.mktemp("flame"), "full", seed=0)
    flame, uv = load_flame(files["plain"]), load_uv_template(files["obj"])
    np.testing.assert_array_equal(flame.v_template, arkit_head[0].v_template)
    return SimpleNamespace(files=files, flame=flame, uv=uv, embedding=arkit_head[2])


@pytest.fixture()
def prefs(model):
    prefs = preferences.get_preferences(bpy.context)
    prefs.flame_model, prefs.uv_template = str(model.files["plain"]), str(model.files["obj"])
    yield prefs
    for _key, prop, _label in preferences.ASSET_PROPERTIES:
        setattr(prefs, prop, "")


@pytest.fixture(scope="module")
def rig(model):
    fit = random_fit(model.flame, seed=31, max_degrees=15.0)
    return fit, build_rig(model.flame, model.uv, fit, model.embedding)


def build(rig, name="anim", texture=True):
    pixels = np.full((8, 8, 4), 0.5, dtype=np.float32) if texture else None
    photo = bpy.data.images.new("photo", 16, 12)
    head = scene.build_head(bpy.context, rig[1], name=name, texture=pixels, photo=photo)
    bpy.context.scene.p3dmm.head = head.mesh
    return head


def app_matrices(angles):
    """The app's yaw, pitch, roll as core.livelink states them: R_y(-yaw) R_x(pitch) R_z(-roll), via scipy."""
    a = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_euler("YXZ", np.stack((-a[:, 0], a[:, 1], -a[:, 2]), 1)).as_matrix()


def make_take(path: Path, rows=90, fps=30.0, seed=0) -> Take:
    rng = np.random.default_rng(seed)
    take = Take.from_frames(rng.uniform(0, 1, (rows, 51)), fps=fps, head=rng.normal(0, 0.2, (rows, 3)),
                            eyes=rng.normal(0, 0.2, (rows, 2, 3)), start=12 * 3600.0 + 7.25)
    write_take(path, take)
    return read_take(path)  # as the file holds it (10 decimals)


def quaternion(bone) -> np.ndarray:
    w, x, y, z = bone.rotation_quaternion
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def state(head):
    """Everything a failed operator must leave as it was."""
    keys = head.mesh.data.shape_keys
    render = bpy.context.scene.render
    actions = tuple(b.animation_data.action if b.animation_data else None for b in (keys, head.armature))
    return (len(bpy.data.objects), len(bpy.data.actions), len(bpy.data.meshes), len(bpy.data.materials),
            len(bpy.data.collections), render.fps, render.fps_base, bpy.context.scene.frame_start,
            bpy.context.scene.frame_end, tuple(k.value for k in keys.key_blocks), actions,
            tuple(tuple(b.rotation_quaternion) for b in head.armature.pose.bones))


def one_sentence(exc) -> str:
    """The operator's report (bpy raises it as "Error: <report>"), checked to be one line ending in a period."""
    text = str(exc.value).strip()
    assert text.startswith("Error: ") and "\n" not in text and text.endswith(".")
    return text[len("Error: "):]


# ------------------------------------------------------------------------------------------------ Live Link in
def test_take_import_keys_one_frame_per_row(rig, tmp_path):
    fit, built_rig = rig
    head = build(rig)
    take = make_take(tmp_path / "take.csv")
    bpy.context.scene.frame_start = 11
    assert bpy.ops.pixel3dmm.import_livelink(filepath=str(tmp_path / "take.csv")) == {"FINISHED"}
    render, blender_scene = bpy.context.scene.render, bpy.context.scene
    assert render.fps / render.fps_base == pytest.approx(30.0)
    assert (blender_scene.frame_start, blender_scene.frame_end) == (11, 11 + 89)
    curves = animation.fcurves(head.mesh.data.shape_keys)
    for name in ARKIT_NAMES:
        points = curves[(f'key_blocks["{name}"].value', 0)].keyframe_points
        assert len(points) == 90
        co = np.empty(180, dtype=np.float32)
        points.foreach_get("co", co)
        np.testing.assert_array_equal(co[0::2], np.arange(11, 101))
        np.testing.assert_allclose(co[1::2], take.weights[:, ARKIT_NAMES.index(name)], atol=1e-7)
        assert {p.interpolation for p in points} == {"LINEAR"}
    gaze = {k.name: k.eye_poses for k in built_rig.arkit_keys}
    keys, bones = head.mesh.data.shape_keys.key_blocks, head.armature.pose.bones
    for row in (0, 17, 89):
        blender_scene.frame_set(11 + row)
        assert keys["fitted_expression"].value == 0.0  # the take states the whole face from neutral
        assert [keys[n].value for n in ARKIT_NAMES] == pytest.approx(take.weights[row], abs=1e-6)
        np.testing.assert_allclose(quaternion(bones["neck"]), app_matrices(take.head[row])[0], atol=1e-5)
        np.testing.assert_allclose(quaternion(bones["jaw"]), np.eye(3), atol=1e-7)
        for side, bone in enumerate(("eye.L", "eye.R")):
            axis_angle = sum(take.weights[row, i] * gaze[n][side] for i, n in enumerate(ARKIT_NAMES))
            shown = quaternion(bones[bone]) @ Rotation.from_rotvec(axis_angle).as_matrix()
            # the eye turns by the take's angles once: the bone after the eye-look keys' baked gaze
            np.testing.assert_allclose(shown, app_matrices(take.eyes[row, side])[0], atol=1e-5)


def test_take_round_trip(rig, tmp_path):
    head = build(rig)
    original = make_take(tmp_path / "in.csv", rows=120, fps=60.0, seed=1)
    assert bpy.ops.pixel3dmm.import_livelink(filepath=str(tmp_path / "in.csv")) == {"FINISHED"}
    assert bpy.ops.pixel3dmm.export_livelink(filepath=str(tmp_path / "out.csv")) == {"FINISHED"}
    back = read_take(tmp_path / "out.csv")
    assert (back.fps, len(back.frames)) == (60.0, 120)
    np.testing.assert_array_equal(back.frames, original.frames)
    np.testing.assert_allclose(back.times, original.times, atol=1e-6)
    np.testing.assert_allclose(back.weights, original.weights, atol=1e-6)
    np.testing.assert_allclose(back.head, original.head, atol=2e-5)
    np.testing.assert_allclose(back.eyes, original.eyes, atol=2e-5)
    assert head.mesh.name in bpy.data.objects


def test_exported_take_follows_edited_curves(rig, tmp_path):
    """Keys set by hand (no take): the rows run from the first to the last keyframe, weights from the curves."""
    head = build(rig)
    keys = head.mesh.data.shape_keys.key_blocks
    keys["jawOpen"].value = 0.0
    keys["jawOpen"].keyframe_insert("value", frame=5)
    keys["jawOpen"].value = 0.8
    keys["jawOpen"].keyframe_insert("value", frame=40)
    keys["browInnerUp"].value = 0.25
    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = 24, 1.0
    assert bpy.ops.pixel3dmm.export_livelink(filepath=str(tmp_path / "hand.csv")) == {"FINISHED"}
    take = read_take(tmp_path / "hand.csv")
    assert take.fps == 24 and len(take.frames) == 36
    jaw = take.weights[:, ARKIT_NAMES.index("jawOpen")]
    np.testing.assert_allclose(jaw[[0, -1]], [0.0, 0.8], atol=1e-6)
    assert np.all(np.diff(jaw) > 0)
    np.testing.assert_allclose(take.weights[:, ARKIT_NAMES.index("browInnerUp")], 0.25, atol=1e-6)


def _rewrite(good: Path, bad: Path, edit) -> Path:
    lines = good.read_text().splitlines()
    bad.write_text("\n".join(edit(lines)) + "\n")
    return bad


def _replace_column(name, new):
    def edit(lines):
        header = lines[0].split(",")
        header[header.index(name)] = new
        return [",".join(header)] + lines[1:]
    return edit


def _drop_column(name):
    def edit(lines):
        i = lines[0].split(",").index(name)
        return [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines]
    return edit


def _cell(row, column, text):
    def edit(lines):
        cells = lines[row].split(",")
        cells[column] = text
        return lines[:row] + [",".join(cells)] + lines[row + 1:]
    return edit


BAD_TAKES = [
    ("missing", _drop_column("JawOpen"), "lacks the column JawOpen"),
    ("misspelt", _replace_column("JawOpen", "JawOpne"), "has a column 'JawOpne' where 'JawOpen' is expected"),
    ("duplicate", _replace_column("MouthClose", "JawOpen"), "has two 'JawOpen' columns"),
    ("extra value", lambda lines: lines[:3] + [lines[3] + ",0.5"] + lines[4:], "Line 4 of the take"),
    ("not a number", _cell(2, 5, "abc"), "has 'abc' in column"),
    ("no rows", lambda lines: lines[:1], "has no frames"),
    ("empty", lambda lines: [""], "is empty"),
    ("semicolons", lambda lines: [line.replace(",", ";") for line in lines], "separates its columns with ';'"),
    ("not a take", lambda lines: ["name,age", "ada,36"], "is not a Live Link Face take"),
]


@pytest.mark.parametrize("case, edit, expected", BAD_TAKES, ids=[c[0] for c in BAD_TAKES])
def test_bad_take_is_one_sentence_and_leaves_the_scene(rig, tmp_path, case, edit, expected):
    head = build(rig)
    make_take(tmp_path / "ok.csv", rows=5)
    bad = _rewrite(tmp_path / "ok.csv", tmp_path / "bad.csv", edit)
    before = state(head)
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.import_livelink(filepath=str(bad))
    assert expected in one_sentence(exc)
    assert state(head) == before


def test_binary_file_is_not_a_take(rig, tmp_path):
    head = build(rig)
    png = tmp_path / "photo.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    before = state(head)
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.import_livelink(filepath=str(png))
    assert "is a binary file, not a CSV take" in one_sentence(exc) and state(head) == before


def test_extra_unknown_columns_are_ignored(rig, tmp_path):
    """A column the app does not write (a later app version's, a user's note) is skipped, not an error."""
    build(rig)
    good = make_take(tmp_path / "ok.csv", rows=4)
    extra = _rewrite(tmp_path / "ok.csv", tmp_path / "extra.csv",
                     lambda lines: [lines[0] + ",Comment"] + [line + ",x" for line in lines[1:]])
    assert bpy.ops.pixel3dmm.import_livelink(filepath=str(extra)) == {"FINISHED"}
    assert bpy.context.scene.frame_end - bpy.context.scene.frame_start + 1 == len(good.frames)


def test_head_without_arkit_keys_takes_no_take(tmp_path):
    flame, uv = synthetic_head(seed=2)
    head = scene.build_head(bpy.context, build_rig(flame, uv, random_fit(flame)), name="plain")
    make_take(tmp_path / "take.csv", rows=3)
    before = state(head)
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.import_livelink(filepath=str(tmp_path / "take.csv"))
    assert "has no ARKit keys" in one_sentence(exc) and state(head) == before
    with pytest.raises(RuntimeError, match="no ARKit keys"):
        bpy.ops.pixel3dmm.export_livelink(filepath=str(tmp_path / "out.csv"))


def test_export_without_animation_says_what_to_do(rig, tmp_path):
    build(rig)
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.export_livelink(filepath=str(tmp_path / "out.csv"))
    assert "has no ARKit animation; import a take or keyframe" in one_sentence(exc)
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------------------------------------ FLAME parameters
def _close(got, expected, atol):
    for name in ("shape", "expression", "eyelids", "neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right",
                 "head_rotation", "head_translation", "camera_K"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), atol=atol, err_msg=name)
    assert got.image_size == expected.image_size


def test_export_parameters_of_the_fitted_head(rig, prefs, model, tmp_path):
    fit, _ = rig
    build(rig)
    for suffix in (".npz", ".json"):
        path = tmp_path / f"head{suffix}"
        assert bpy.ops.pixel3dmm.export_flame_params(filepath=str(path)) == {"FINISHED"}
        _close(load_flame_params(path, model.flame), FlameParameters.from_fit(fit), atol=1e-5)


def test_export_parameters_follow_sliders_and_bones(rig, prefs, model, tmp_path):
    fit, built_rig = rig
    head = build(rig)
    keys, bones = head.mesh.data.shape_keys.key_blocks, head.armature.pose.bones
    keys["expression_002"].value = 0.5
    keys["mouthSmileLeft"].value = 0.7
    keys["fitted_expression"].value = 0.5
    neck = np.array([0.1, -0.2, 0.05])
    w, x, y, z = np.roll(Rotation.from_rotvec(neck).as_quat(), 1)
    bones["neck"].rotation_quaternion = (w, x, y, z)
    assert bpy.ops.pixel3dmm.export_flame_params(filepath=str(tmp_path / "moved.npz")) == {"FINISHED"}
    got = load_flame_params(tmp_path / "moved.npz", model.flame)
    smile = {k.name: k for k in built_rig.arkit_keys}["mouthSmileLeft"]
    expected = 0.5 * fit.expression.astype(np.float64) + 0.7 * smile.expression
    expected[2] += 0.5
    np.testing.assert_allclose(got.expression, expected, atol=1e-5)
    np.testing.assert_allclose(got.neck_pose, neck, atol=1e-5)


def test_import_parameters_rebuilds_the_head(rig, prefs, model, tmp_path):
    """Head A's parameters into head B: B shows FLAME's forward pass of A's parameters, keeps its texture, photo,
    names and place, and the scene holds as many objects as before."""
    other = random_fit(model.flame, seed=32, max_degrees=15.0)
    path = save_flame_params(tmp_path / "other.json", other, model.flame)
    head = build(rig, name="target")
    material, photo = head.material, head.camera.data.background_images[0].image
    names = (head.mesh.name, head.armature.name, head.camera.name, head.collection.name)
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials), len(bpy.data.collections))
    assert bpy.ops.pixel3dmm.import_flame_params(filepath=str(path)) == {"FINISHED"}
    new = bpy.context.scene.p3dmm.head
    assert new.name == names[0] and new.users_collection[0].name == names[3]
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials), len(bpy.data.collections)) == counts
    assert new.data.materials[0] == material and scene.head_camera(new).data.background_images[0].image == photo
    assert {o.name for o in new.users_collection[0].objects} == set(names[:3])
    bpy.context.view_layer.update()
    evaluated = new.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    local = np.array([v.co for v in mesh.vertices], dtype=np.float64)
    evaluated.to_mesh_clear()
    world = np.array(new.matrix_world)
    got = local @ world[:3, :3].T + world[:3, 3]
    poses = [other.neck_pose, other.jaw_pose, other.eye_pose_left, other.eye_pose_right]
    expected = (flame_forward(model.flame, other.shape, other.expression, poses) @ other.head_rotation.T
                + other.head_translation) @ C.T
    assert np.abs(got - expected).max() < 1e-5
    assert "mouthSmileLeft" in new.data.shape_keys.key_blocks  # the ARKit keys are rebuilt too


def test_import_parameters_of_another_flame_tool(rig, prefs, model, tmp_path):
    """FLAME_PyTorch's names, a shorter expression vector, no camera: the head keeps its own camera."""
    head = build(rig)
    film = (head.camera.data.lens, head.camera.data.shift_x)
    rng = np.random.default_rng(4)
    shape, expression = rng.normal(size=(1, 100)), rng.normal(size=(1, 50))
    np.savez(tmp_path / "other_tool.npz", shape_params=shape, expression_params=expression,
             pose_params=np.array([[0.0, 0.0, 0.0, 0.2, 0.0, 0.0]]), neck_pose_params=np.zeros((1, 3)),
             eye_pose_params=np.zeros((1, 6)), transl=np.zeros((1, 3)))
    assert bpy.ops.pixel3dmm.import_flame_params(filepath=str(tmp_path / "other_tool.npz")) == {"FINISHED"}
    new = bpy.context.scene.p3dmm.head
    record = new[scene.RECORD].to_dict()
    np.testing.assert_allclose(record["shape"][:100], shape[0], atol=1e-12)
    assert not np.any(record["shape"][100:])
    np.testing.assert_allclose(record["expression"][:50], expression[0], atol=1e-12)
    jaw = new.find_armature().pose.bones["jaw"].rotation_quaternion
    np.testing.assert_allclose(np.array(jaw.to_axis_angle()[0]) * jaw.to_axis_angle()[1], [0.2, 0, 0], atol=1e-6)
    camera = scene.head_camera(new).data
    assert (camera.lens, camera.shift_x) == pytest.approx(film)


BAD_PARAMETERS = [
    ("too many betas", lambda p: np.savez(p, betas=np.ones((1, 400))), "has 400 shape values"),
    ("two frames", lambda p: np.savez(p, expression=np.zeros((2, 100))), "holds 2 sets of values"),
    ("bad rotation", lambda p: np.savez(p, jaw_pose=np.zeros(4)), "save it as axis-angle"),
    ("not numbers", lambda p: p.write_text('{"betas": ["a", "b"]}'), "is not a list of numbers"),
    ("not a parameter file", lambda p: p.write_text("hello"), "is not a .npz or .json FLAME parameter file"),
]


@pytest.mark.parametrize("case, write, expected", BAD_PARAMETERS, ids=[c[0] for c in BAD_PARAMETERS])
def test_bad_parameter_file_is_one_sentence_and_leaves_the_scene(rig, prefs, tmp_path, case, write, expected):
    head = build(rig)
    path = tmp_path / "bad.npz"
    write(path)
    if not path.exists():  # np.savez appends .npz only to names without it
        path = path.with_name(path.name + ".npz")
    before = state(head)
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.pixel3dmm.import_flame_params(filepath=str(path))
    assert expected in one_sentence(exc)
    assert state(head) == before and bpy.context.scene.p3dmm.head == head.mesh


def test_parameters_need_the_heads_flame_model(rig, tmp_path):
    head = build(rig)
    before = state(head)
    with pytest.raises(RuntimeError) as exc:  # no model in the preferences
        bpy.ops.pixel3dmm.export_flame_params(filepath=str(tmp_path / "p.npz"))
    assert one_sentence(exc).startswith("FLAME model") and not (tmp_path / "p.npz").exists()
    prefs = preferences.get_preferences(bpy.context)
    files = write_synthetic_flame(tmp_path / "model", "full", seed=0)
    prefs.flame_model, prefs.uv_template = str(files["plain"]), str(files["obj"])
    head.mesh[scene.RECORD]["flame"] = "2020"  # as if the head came from FLAME 2020
    before = state(head)
    try:
        with pytest.raises(RuntimeError) as exc:
            bpy.ops.pixel3dmm.import_flame_params(filepath=str(tmp_path / "p.npz"))
    finally:
        prefs.flame_model = prefs.uv_template = ""
    assert "built with the FLAME 2020 model but the preferences name the FLAME synthetic model" in one_sentence(exc)
    assert state(head) == before


# ------------------------------------------------------------------------------------------------ panel and reset
class Layout:
    """Stands in for bpy's UILayout: records calls; ``panel`` returns a header and an open body."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.log.append((name, args, kwargs))
            if name == "panel":
                return Layout(self.log), Layout(self.log)
            return Layout(self.log)
        return call

    def __setattr__(self, name, value):
        if name == "log":
            object.__setattr__(self, name, value)


def test_expression_panel_groups_the_arkit_keys(rig):
    build(rig)
    log = []
    expressions.P3DMM_PT_expression.draw(SimpleNamespace(layout=Layout(log)), bpy.context)
    panels = [(args[0], kwargs["default_closed"]) for name, args, kwargs in log if name == "panel"]
    assert panels == [(f"p3dmm_arkit_{g}", False) for g, _, _ in expressions.GROUPS] + [("p3dmm_flame_keys", True)]
    drawn, group = {}, None
    for name, args, kwargs in log:  # each header's label starts a group
        if name == "label":
            group = kwargs["text"]
        if name == "prop" and args[1] == "value":
            drawn.setdefault(group, []).append(args[0].name)
    assert drawn[None] == ["fitted_expression"]
    assert sorted(n for _, title, _ in expressions.GROUPS for n in drawn[title]) == sorted(ARKIT_NAMES)
    assert drawn["Brows"] == [n for n in ARKIT_NAMES if n.startswith("brow")]
    assert drawn["Jaw"] == ["jawForward", "jawRight", "jawLeft", "jawOpen"]
    # the stand-in model has its eyelid blendshapes beside it, so FLAME's components include the two eyelid keys
    assert drawn["FLAME Components (102)"] == [f"expression_{k:03d}" for k in range(100)] + ["eyelid.L", "eyelid.R"]
    assert any(name == "operator" and args[0] == "pixel3dmm.reset_expression" for name, args, _ in log)


def test_reset_zeroes_only_the_arkit_keys(rig):
    head = build(rig)
    keys = head.mesh.data.shape_keys.key_blocks
    for name in ("jawOpen", "eyeBlinkLeft", "cheekPuff"):
        keys[name].value = 0.6
    keys["expression_004"].value = 1.2
    assert bpy.ops.pixel3dmm.reset_expression() == {"FINISHED"}
    assert all(keys[n].value == 0.0 for n in ARKIT_NAMES)
    assert keys["expression_004"].value == pytest.approx(1.2) and keys["fitted_expression"].value == 1.0


def test_panels_of_a_head_without_arkit_keys():
    flame, uv = synthetic_head(seed=2)
    scene.build_head(bpy.context, build_rig(flame, uv, random_fit(flame)), name="plain")
    log = []
    expressions.P3DMM_PT_expression.draw(SimpleNamespace(layout=Layout(log)), bpy.context)
    assert any("No ARKit keys" in kwargs.get("text", "") for name, _, kwargs in log if name == "label")
    assert not bpy.ops.pixel3dmm.reset_expression.poll()
    log = []
    expressions.P3DMM_PT_animation.draw(SimpleNamespace(layout=Layout(log)), bpy.context)
    assert [args[0] for name, args, _ in log if name == "operator"] == [
        "pixel3dmm.import_livelink", "pixel3dmm.export_livelink", "pixel3dmm.import_flame_params",
        "pixel3dmm.export_flame_params"]


def test_operators_and_panels_say_what_they_do():
    for op in (bpy.ops.pixel3dmm.import_livelink, bpy.ops.pixel3dmm.export_livelink,
               bpy.ops.pixel3dmm.import_flame_params, bpy.ops.pixel3dmm.export_flame_params,
               bpy.ops.pixel3dmm.reset_expression):
        rna = op.get_rna_type()
        assert rna.name and rna.description
    for panel in (bpy.types.P3DMM_PT_expression, bpy.types.P3DMM_PT_animation):
        assert panel.bl_parent_id == "P3DMM_PT_main" and panel.bl_label
    assert not bpy.ops.pixel3dmm.import_livelink.poll()  # no head yet


# ------------------------------------------------------------------------------------------------ headless
def test_headless_livelink_exports_the_animation(rig, model, tmp_path, monkeypatch):
    fit, built_rig = rig
    texture = np.full((8, 8, 3), 0.5, dtype=np.float32)
    result = bridge.prepare_result(SimpleNamespace(flame=model.flame, uv=model.uv, fit=fit, texture=texture,
                                                   landmark_embedding=model.embedding))
    result = bridge.ReconstructionResult(SimpleNamespace(used_synthetic=True, messages=[]), result.rig,
                                         result.texture)
    monkeypatch.setattr(bridge, "run_reconstruction", lambda request, on_progress=None, should_cancel=None: result)
    monkeypatch.setattr(headless, "_choose_assets", lambda prefs, args, say: ({k: "" for k, _p, _l in
                                                                              preferences.ASSET_PROPERTIES}, "test"))
    photo = tmp_path / "face.png"
    image = bpy.data.images.new("face", 32, 24)
    image.filepath_raw, image.file_format = str(photo), "PNG"
    image.save()
    take = make_take(tmp_path / "take.csv", rows=48, fps=24.0)
    out = tmp_path / "out"
    code = headless.main([str(photo), "--out", str(out), "--livelink", str(tmp_path / "take.csv"), "--fbx",
                          "--no-preview"])
    assert code == 0
    gltf = pygltflib.GLTF2().load(str(out / "head.glb"))
    assert set(ARKIT_NAMES) <= set(gltf.meshes[0].extras["targetNames"])
    (anim,) = gltf.animations
    weights = [c for c in anim.channels if c.target.path == "weights"]
    assert len(weights) == 1
    assert gltf.accessors[anim.samplers[weights[0].sampler].input].count == len(take.frames)
    assert (out / "head.fbx").is_file() and (out / "head.blend").is_file()
    before = sorted(p.name for p in out.iterdir())
    bad = headless.main([str(photo), "--out", str(out), "--livelink", str(tmp_path / "missing.csv"),
                         "--no-preview"])
    assert bad == 2  # one sentence, and the folder as it was
    assert sorted(p.name for p in out.iterdir()) == before
