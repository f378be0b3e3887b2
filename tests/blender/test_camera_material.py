"""The camera reproduces the fit's projection; the material shows the baked texture; the photo is the
camera's background."""

from types import SimpleNamespace

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from core.rig import build_rig
from heads import random_fit, synthetic_head
from pixel3dmm_blender import bridge, scene


def fit_pixels(fit, vertices_world):
    """Pixels of FLAME world points under the fit's pinhole: camera at (0,0,1), OpenCV axes, K_photo."""
    cam = (vertices_world - np.array([0.0, 0.0, 1.0])) * np.array([1.0, -1.0, -1.0])
    projected = cam @ np.asarray(fit.K_photo).T
    return projected[:, :2] / projected[:, 2:]


def test_camera_projects_like_the_fit():
    flame, uv = synthetic_head(seed=6)
    fit = random_fit(flame, seed=2, photo_size=(480, 640))
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="cam")
    render = bpy.context.scene.render
    assert (render.resolution_x, render.resolution_y) == (640, 480)
    assert bpy.context.scene.camera == built.camera
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    world = fit.vertices_posed.astype(np.float64)
    got = []
    for point in world[::7] @ c.T:
        ndc = world_to_camera_view(bpy.context.scene, built.camera, Vector(point))
        got.append((ndc.x * 640, (1.0 - ndc.y) * 480))
    expected = fit_pixels(fit, world[::7])
    assert np.abs(np.array(got) - expected).max() < 0.01
    # the principal point is off-centre in this fit, so a camera without shift would miss by pixels
    assert abs(built.camera.data.shift_x) > 0.01 and abs(built.camera.data.shift_y) > 0.01


def test_portrait_photo_keeps_the_focal_in_pixels():
    flame, uv = synthetic_head(seed=6)
    fit = random_fit(flame, seed=4, photo_size=(900, 600))
    built = scene.build_head(bpy.context, build_rig(flame, uv, fit), name="portrait")
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    world = fit.vertices_posed.astype(np.float64)[::11]
    got = [world_to_camera_view(bpy.context.scene, built.camera, Vector(p)) for p in world @ c.T]
    got = np.array([(v.x * 600, (1.0 - v.y) * 900) for v in got])
    assert np.abs(got - fit_pixels(fit, world)).max() < 0.01


def test_texture_material_and_background():
    flame, uv = synthetic_head(seed=6)
    fit = random_fit(flame, seed=2)
    rng = np.random.default_rng(0)
    texture = rng.random((64, 64, 3)).astype(np.float32)
    photo = bpy.data.images.new("photo", 32, 24)
    result = bridge.prepare_result(SimpleNamespace(flame=flame, uv=uv, fit=fit, texture=texture, landmark_embedding=None))
    built = scene.build_head(bpy.context, result.rig, name="tex", texture=result.texture, photo=photo)
    image = built.texture
    assert tuple(image.size) == (64, 64) and image.packed_file is not None
    pixels = np.empty(64 * 64 * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(64, 64, 4)
    # Blender's row 0 is the bottom (v = 0); the baker's row 0 is the top (v = 1); bytes quantise to 1/255
    np.testing.assert_allclose(pixels[::-1, :, :3], texture, atol=0.5 / 255 + 1e-6)
    nodes = built.material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE" and link.from_node.image == image
    assert built.mesh.data.materials[0] == built.material
    backgrounds = built.camera.data.background_images
    assert len(backgrounds) == 1 and backgrounds[0].image == photo and built.camera.data.show_background_images


def test_without_texture_the_material_has_no_image():
    flame, uv = synthetic_head(seed=6)
    built = scene.build_head(bpy.context, build_rig(flame, uv, random_fit(flame)), name="plain")
    assert built.texture is None
    assert not any(n.type == "TEX_IMAGE" for n in built.material.node_tree.nodes)
    assert len(built.camera.data.background_images) == 0


def test_uv_map_matches_template():
    flame, uv = synthetic_head(seed=6)
    built = scene.build_head(bpy.context, build_rig(flame, uv, random_fit(flame)), name="uv")
    data = built.mesh.data
    got = np.empty(len(data.loops) * 2, dtype=np.float32)
    data.uv_layers.active.data.foreach_get("uv", got)
    np.testing.assert_allclose(got.reshape(-1, 3, 2), uv.corner_uv, atol=1e-6)
    corners = np.empty(len(data.loops), dtype=np.int32)
    data.loops.foreach_get("vertex_index", corners)
    np.testing.assert_array_equal(corners.reshape(-1, 3), flame.faces)
