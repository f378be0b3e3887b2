"""Scene settings at ``bpy.types.Scene.p3dmm``: the photo source, quality, texture size, which face to fit, the
last head built, and the progress of a running reconstruction (written by the operator on the main thread only)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

SOURCE_ITEMS = (
    ("EDITOR", "Image Editor", "Use the image shown in an open Image Editor"),
    ("IMAGE", "Image", "Use an image datablock of this file"),
    ("FILE", "File", "Load the photo from a file on disk"),
)
QUALITY_ITEMS = (
    ("fast", "Fast", "Fewer fitting steps: a quick preview"),
    ("balanced", "Balanced", "The default trade-off between time and accuracy"),
    ("best", "Best", "The most fitting steps: slowest, most accurate"),
)
MODE_ITEMS = (
    ("auto", "Auto", "Fit the Pixel3DMM networks' predictions when both networks are set in the preferences, "
     "else the face landmarks alone"),
    ("networks", "Networks", "Fit the UV and normal networks' predictions and the face landmarks (the method)"),
    ("landmarks", "Landmarks Only", "Fit the face landmarks alone: needs only the FLAME model (for example FLAME "
     "2023 Open for commercial work), less detailed"),
)
TEXTURE_ITEMS = (
    ("512", "512", "512 x 512 pixel texture"),
    ("1024", "1024", "1024 x 1024 pixel texture"),
    ("2048", "2048", "2048 x 2048 pixel texture"),
)


def _is_head_mesh(_self, obj) -> bool:
    return obj.type == "MESH"


class P3DMM_SceneSettings(bpy.types.PropertyGroup):
    image_source: EnumProperty(name="Source", description="Where the photo comes from", items=SOURCE_ITEMS)
    image: PointerProperty(name="Image", description="The photo as an image datablock", type=bpy.types.Image)
    filepath: StringProperty(name="Photo", description="The photo file (JPEG, PNG, ...)", subtype="FILE_PATH")
    quality: EnumProperty(
        name="Quality", description="Fitting preset", items=QUALITY_ITEMS, default="balanced"
    )
    mode: EnumProperty(name="Fit To", description="What the head is fitted to", items=MODE_ITEMS, default="auto")
    texture_size: EnumProperty(
        name="Texture", description="Size of the texture baked from the photo", items=TEXTURE_ITEMS,
        default="1024",
    )
    face_index: IntProperty(
        name="Face", description="Which face to fit when the photo shows several: 0 is the largest, 1 the next "
        "largest, and so on", min=0, soft_max=9, default=0,
    )
    head: PointerProperty(
        name="Head", description="The head mesh the export buttons write", type=bpy.types.Object,
        poll=_is_head_mesh,
    )
    progress: FloatProperty(
        name="Progress", description="Progress of the running reconstruction", min=0.0, max=1.0,
        subtype="FACTOR",
    )
    stage: StringProperty(name="Stage", description="What the running reconstruction is doing")


CLASSES = (P3DMM_SceneSettings,)
