"""Pixel3DMM for Blender: one photo to a rigged, textured FLAME head with expression shape keys; a clip to that
head animated on every frame.

The add-on is a thin shell over ``core`` (reached only through :mod:`.bridge`): a sidebar tab in the 3D
viewport (:mod:`.panels`), scene settings at ``Scene.p3dmm`` (:mod:`.props`), asset paths and the device in
the preferences (:mod:`.preferences`), the reconstruct and export operators (:mod:`.operators`) with their
worker thread (:mod:`.jobs`), the Track Video operator (:mod:`.tracking`), the network download
(:mod:`.downloads`), the scene builder (:mod:`.scene`) and exporters (:mod:`.export`), the Expression and
Animation panels (:mod:`.expressions`) and the take and FLAME-parameter operators (:mod:`.animation`).
"""

import bpy

from . import animation, downloads, expressions, jobs, operators, panels, preferences, props, tracking

_CLASSES = (*preferences.CLASSES, *props.CLASSES, *operators.CLASSES, *tracking.CLASSES, *downloads.CLASSES,
            *animation.CLASSES, *panels.CLASSES, *expressions.CLASSES)


def register():
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.p3dmm = bpy.props.PointerProperty(type=props.P3DMM_SceneSettings)


def unregister():
    jobs.cancel_active()
    downloads.cancel_active()
    del bpy.types.Scene.p3dmm
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
