"""The reconstruct operator through the real core pipeline with the project's stand-in assets.

Small synthetic FLAME head, tiny random-weight networks, the scikit-image astronaut photo, and a fitting
schedule cut to 2 % of the "fast" preset's steps: this checks the contract between the add-on and the core
(request fields, the Reconstruction's fields and conventions), not the fit's quality.
"""

import bpy
import numpy as np
import pytest

import core.fit.config
from core.flame.synthetic import write_synthetic_flame
from core.network.synthetic import write_synthetic_checkpoint
from pixel3dmm_blender import bridge, preferences

pytestmark = pytest.mark.slow
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture()
def assets(tmp_path):
    flame = write_synthetic_flame(tmp_path, "small")
    return {
        "flame_model": flame["plain"],
        "uv_template": flame["obj"],
        "uv_checkpoint": write_synthetic_checkpoint(tmp_path / "uv.ckpt", "tiny", prediction_type="uv_map"),
        "normals_checkpoint": write_synthetic_checkpoint(tmp_path / "normals.ckpt", "tiny",
                                                         prediction_type="normals"),
    }


def test_reconstruct_face_with_the_real_pipeline(assets, tmp_path, monkeypatch):
    preset = core.fit.config.FitConfig.preset
    monkeypatch.setattr(core.fit.config.FitConfig, "preset", classmethod(
        lambda cls, name: preset(name).with_steps(0.02)))
    results = []
    real_run = bridge.run_reconstruction

    def recording_run(request, on_progress=None, should_cancel=None):
        results.append(real_run(request, on_progress, should_cancel))
        return results[-1]

    monkeypatch.setattr(bridge, "run_reconstruction", recording_run)
    prefs = preferences.get_preferences(bpy.context)
    for prop, path in assets.items():
        setattr(prefs, prop, str(path))
    prefs.device = "cpu"
    photo = bpy.data.images.new("astronaut.png", 512, 512)
    rgba = np.ones((512, 512, 4), dtype=np.float32)
    rgba[:, :, :3] = skimage_data.astronaut()[::-1] / 255.0
    photo.pixels.foreach_set(rgba.ravel())
    settings = bpy.context.scene.p3dmm
    settings.image_source = "IMAGE"
    settings.image = photo
    settings.quality = "fast"
    settings.texture_size = "512"
    try:
        assert bpy.ops.pixel3dmm.reconstruct_face() == {"FINISHED"}
    finally:
        for _key, prop, _label in preferences.ASSET_PROPERTIES:
            setattr(prefs, prop, "")
    (prepared,) = results
    result = prepared.reconstruction
    assert result.used_synthetic
    head = settings.head
    assert head.users_collection[0].name == "astronaut"
    lids = result.flame.eyelids
    arkit = len(prepared.rig.arkit_keys)  # MediaPipe finds no face on the small head: no embedding, no ARKit keys
    assert arkit in (0, 51) and (arkit == 51) == (result.landmark_embedding is not None)
    assert arkit or "no ARKit expression keys" in prepared.warnings[0]
    assert len(head.data.shape_keys.key_blocks) == 1 + arkit + 1 + result.flame.n_expr + (0 if lids is None else 2) + 36
    assert tuple(head.data.materials[0].node_tree.nodes["Image Texture"].image.size) == (512, 512)
    # Blender's head equals the fit's world vertices away from the eyelids (which core adds after skinning)
    bpy.context.view_layer.update()
    evaluated = head.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    local = np.array([v.co for v in mesh.vertices], dtype=np.float64)
    evaluated.to_mesh_clear()
    world = np.array(head.matrix_world)
    flame_world = (local @ world[:3, :3].T + world[:3, 3]) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    lid_free = np.ones(len(local), bool) if lids is None else np.abs(lids).sum(axis=(0, 2)) == 0
    error = np.linalg.norm(flame_world - result.fit.vertices_posed, axis=1)
    assert error[lid_free].max() < 1e-5 and error.max() < 1e-3
