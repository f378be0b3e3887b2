"""Blender add-on tests: enable the add-on once per session, start every test from an empty file.

The add-on is enabled through ``addon_utils`` like Blender does (so its preferences exist); any error while
registering fails the session instead of being printed and swallowed. ``arkit_head`` is core's full-size synthetic
head with a MediaPipe landmark embedding derived as the pipeline derives one (cached in the session's cache).
"""

import bpy  # first: addon_utils lives in Blender's bundled modules
import addon_utils
import pytest

ADDON = "pixel3dmm_blender"


def _raise(exc):
    raise exc


@pytest.fixture(scope="session", autouse=True)
def addon():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = addon_utils.enable(ADDON, default_set=True, handle_error=_raise)
    assert module is not None and ADDON in bpy.context.preferences.addons
    yield module
    addon_utils.disable(ADDON, default_set=True, handle_error=_raise)


@pytest.fixture(autouse=True)
def empty_file(addon):
    bpy.ops.wm.read_homefile(use_empty=True)
    yield


@pytest.fixture(scope="session")
def arkit_head():
    """(FlameData, UVTemplate, LandmarkEmbedding) of the full-size synthetic head; skipped without mediapipe."""
    from core.flame.synthetic import synthetic_flame
    from core.landmarks import resolve_embedding

    flame, uv = synthetic_flame("full", seed=0)
    embedding, note = resolve_embedding(flame)
    if embedding is None:
        pytest.skip(note)
    return flame, uv, embedding
