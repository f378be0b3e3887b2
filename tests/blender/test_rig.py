"""The rig check: Blender's evaluated head equals core's FLAME forward pass (float64) within 0.01 mm.

Blender skins with its own armature code and evaluates the corrective keys through drivers, so this compares
two independent implementations of FLAME's linear blend skinning and pose correctives.
"""

import bpy
import numpy as np
import pytest
from mathutils import Matrix, Quaternion

from core.arkit import ARKIT_NAMES
from core.flame.synthetic import synthetic_flame
from core.rig import build_rig
from pixel3dmm_blender import scene
from heads import flame_forward, random_fit, random_rotation, rodrigues, synthetic_head

TOLERANCE_M = 1e-5  # 0.01 mm
BONES = ["root", "neck", "jaw", "eye.L", "eye.R"]  # in FLAME's joint order


@pytest.fixture(scope="module", params=["tests", "core-small"])
def head(request):
    """Two different heads: this folder's sphere head and core's FLAME-like synthetic head (with eyeballs)."""
    if request.param == "tests":
        return synthetic_head(seed=3)
    return synthetic_flame("small", seed=3)


def evaluated_world(obj) -> np.ndarray:
    bpy.context.view_layer.update()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]


def to_blender_world(flame_vertices, fit) -> np.ndarray:
    """FLAME vertices -> head pose (R v + t) -> Blender Z-up (+90 degrees about X), all in numpy."""
    world = flame_vertices @ np.asarray(fit.head_rotation, np.float64).T + np.asarray(fit.head_translation)
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return world @ c.T


def set_pose(armature, poses, root=None):
    bones = armature.pose.bones
    for name, axis_angle in zip(BONES[1:], poses):
        bones[name].rotation_quaternion = Matrix(rodrigues(np.asarray(axis_angle, np.float64)).tolist()).to_quaternion()
    if root is not None:
        bones["root"].rotation_quaternion = Matrix(rodrigues(root).tolist()).to_quaternion()


def fit_poses(fit):
    return [fit.neck_pose, fit.jaw_pose, fit.eye_pose_left, fit.eye_pose_right]


def test_fitted_head_matches_flame_forward(head):
    flame, uv = head
    fit = random_fit(flame, seed=11)
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="rig")
    got = evaluated_world(built.mesh)
    expected = to_blender_world(flame_forward(flame, fit.shape, fit.expression, fit_poses(fit)), fit)
    assert np.abs(got - expected).max() < TOLERANCE_M
    # and the fit's own world-space vertices (float32), rotated to Z-up
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert np.abs(got - fit.vertices_posed.astype(np.float64) @ c.T).max() < TOLERANCE_M


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_random_poses_follow_flame(head, seed):
    """Re-pose the built rig (root included, as FLAME's global pose): drivers and skinning must follow."""
    flame, uv = head
    fit = random_fit(flame, seed=5)
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="poses")
    rng = np.random.default_rng(seed)
    poses = [random_rotation(rng, 30.0) for _ in range(4)]
    root = random_rotation(rng, 30.0)
    set_pose(built.armature, poses, root)
    got = evaluated_world(built.mesh)
    expected = to_blender_world(flame_forward(flame, fit.shape, fit.expression, poses, global_pose=root), fit)
    assert np.abs(got - expected).max() < TOLERANCE_M


def test_correctives_are_needed_for_the_match(head):
    """With the corrective drivers muted the mesh misses FLAME by far more than the tolerance."""
    flame, uv = head
    fit = random_fit(flame, seed=12)
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="muted")
    for fcurve in built.mesh.data.shape_keys.animation_data.drivers:
        fcurve.mute = True
    for key in built.mesh.data.shape_keys.key_blocks:
        if key.name.startswith("pose_"):
            key.value = 0.0
    got = evaluated_world(built.mesh)
    expected = to_blender_world(flame_forward(flame, fit.shape, fit.expression, fit_poses(fit)), fit)
    assert np.abs(got - expected).max() > 20 * TOLERANCE_M


def test_eyelid_keys_are_skinned(head):
    """Eyelid keys act before skinning in Blender (and in engines); FLAME adds them after skinning. The
    difference is exactly the skinning rotation applied to the eyelid offsets, computed here independently."""
    flame, uv = head
    fit = random_fit(flame, seed=13, eyelids=True)
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="lids")
    got = evaluated_world(built.mesh)
    base = flame_forward(flame, fit.shape, fit.expression, fit_poses(fit))
    offsets = np.einsum("k,kvc->vc", fit.eyelids.astype(np.float64), flame.eyelids)
    world = [np.eye(3)]
    for joint in range(1, 5):
        pose = fit_poses(fit)[joint - 1].astype(np.float64)
        world.append(world[flame.parents[joint]] @ rodrigues(pose))
    blend = np.einsum("vj,jab->vab", flame.weights, np.stack(world))
    expected = to_blender_world(base + np.einsum("vab,vb->va", blend, offsets), fit)
    assert np.abs(got - expected).max() < TOLERANCE_M
    flame_with_lids = to_blender_world(
        flame_forward(flame, fit.shape, fit.expression, fit_poses(fit), eyelids=fit.eyelids), fit)
    assert np.abs(got - flame_with_lids).max() > TOLERANCE_M


def test_rig_structure(head):
    flame, uv = head
    fit = random_fit(flame, seed=14, eyelids=True)
    rig = build_rig(flame, uv, fit)
    built = scene.build_head(bpy.context, rig, name="structure")
    keys = built.mesh.data.shape_keys.key_blocks
    names = [key.name for key in keys]
    assert names[:2] == ["Basis", "fitted_expression"]
    n_expr = flame.n_expr
    assert names[2:2 + n_expr] == [f"expression_{k:03d}" for k in range(n_expr)]
    assert names[2 + n_expr:4 + n_expr] == ["eyelid.L", "eyelid.R"]
    assert len(names) == 2 + n_expr + 2 + 36
    fitted = keys["fitted_expression"]
    assert (fitted.value, fitted.slider_min, fitted.slider_max) == (1.0, 0.0, 1.0)
    for k in range(n_expr):
        key = keys[f"expression_{k:03d}"]
        assert (key.slider_min, key.value, key.slider_max) == (-3.0, 0.0, 3.0)
    # the record of the head: the fitted parameters, read back from the custom property
    record = built.mesh[scene.RECORD].to_dict()
    np.testing.assert_allclose(record["expression"], fit.expression, atol=1e-6)
    np.testing.assert_allclose(record["shape"], fit.shape, atol=1e-6)
    assert record["arkit"] == {} and record["flame"] == flame.release
    drivers = built.mesh.data.shape_keys.animation_data.drivers
    assert len(drivers) == 36
    for fcurve in drivers:
        assert fcurve.driver.is_valid and fcurve.driver.is_simple_expression
        assert fcurve.driver.type == "SCRIPTED"
    for key in rig.corrective_keys:  # each driver reads the bone and matrix entry the rig states
        driver = drivers.find(f'key_blocks["{key.name}"].value').driver
        assert driver.expression == scene.corrective_expression(key.row, key.col)
        assert {var.targets[0].bone_target for var in driver.variables} == {BONES[key.joint]}
    assert [g.name for g in built.mesh.vertex_groups] == BONES
    weights = np.zeros((len(built.mesh.data.vertices), 5))
    for vertex in built.mesh.data.vertices:
        for element in vertex.groups:
            weights[vertex.index, element.group] = element.weight
    np.testing.assert_allclose(weights, flame.weights, atol=1e-6)
    bones = built.armature.data.bones
    assert [b.name for b in bones] == BONES
    assert [b.parent.name if b.parent else None for b in bones] == [None, "root", "neck", "neck", "neck"]
    joints = flame.J_regressor @ (flame.v_template + flame.shapedirs @ fit.shape + flame.exprdirs @ fit.expression)
    np.testing.assert_allclose(np.array([b.head_local for b in bones]), joints, atol=1e-6)
    assert built.mesh.data.uv_layers.active is not None
    assert all(p.use_smooth for p in built.mesh.data.polygons)
    assert built.mesh.parent == built.armature
    assert built.collection.name == "structure"
    assert set(built.collection.objects) == {built.mesh, built.armature, built.camera}
    assert bpy.context.view_layer.objects.active == built.mesh


def test_no_eyelid_keys_without_eyelid_model():
    flame, uv = synthetic_head(eyelids=False, seed=4)
    built = scene.build_head(bpy.context, build_rig(flame, uv, random_fit(flame)), name="nolids")
    names = [key.name for key in built.mesh.data.shape_keys.key_blocks]
    assert len(names) == 1 + 1 + 100 + 36 and "eyelid.L" not in names


def test_corrective_expressions_are_r_minus_identity():
    """Each driver expression, evaluated in Python on an unnormalised quaternion, is an entry of R - I."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        w, x, y, z = rng.normal(size=4) * 1.7
        rotation = np.array(Quaternion((w, x, y, z)).normalized().to_matrix())
        for row in range(3):
            for col in range(3):
                value = eval(scene.corrective_expression(row, col), {}, {"w": w, "x": x, "y": y, "z": z})
                assert value == pytest.approx(rotation[row, col] - (row == col), abs=1e-6)


def test_head_with_arkit_keys_still_matches_flame(arkit_head):
    """The 51 ARKit keys rest at 0 (range 0..1), so the head with them still is FLAME's forward pass."""
    flame, uv, embedding = arkit_head
    fit = random_fit(flame, seed=15)
    rig = build_rig(flame, uv, fit, embedding)
    built = scene.build_head(bpy.context, rig, name="arkit")
    got = evaluated_world(built.mesh)
    expected = to_blender_world(flame_forward(flame, fit.shape, fit.expression, fit_poses(fit)), fit)
    assert np.abs(got - expected).max() < TOLERANCE_M
    keys = built.mesh.data.shape_keys.key_blocks
    assert [k.name for k in keys][1:53] == list(ARKIT_NAMES) + ["fitted_expression"]
    assert all((keys[n].value, keys[n].slider_min, keys[n].slider_max) == (0.0, 0.0, 1.0) for n in ARKIT_NAMES)
    # a key at 1 moves the mesh by its offsets (before skinning), here the jaw opening
    keys["jawOpen"].value = 1.0
    assert np.abs(evaluated_world(built.mesh) - expected).max() > 1e-3
    assert sorted(built.mesh[scene.RECORD]["arkit"].keys()) == sorted(ARKIT_NAMES)
