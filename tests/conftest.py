"""Test session setup: keep Blender, Mesa and Hugging Face away from the user's folders and the network.

These variables must be set before bpy or timm is imported, so they are set here at collection time.
"""

import os
import sys
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="p3dmm-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["BLENDER_USER_RESOURCES"] = str(_SESSION_DIR / "blender_user")
os.environ["MESA_SHADER_CACHE_DIR"] = str(_SESSION_DIR / "mesa_cache")
os.environ["PIXEL3DMM_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["PIXEL3DMM_CONFIG"] = str(_SESSION_DIR / "no-config.toml")
for _name in ("PIXEL3DMM_FLAME", "PIXEL3DMM_UV_TEMPLATE", "PIXEL3DMM_UV_CKPT", "PIXEL3DMM_NORMALS_CKPT"):
    os.environ.pop(_name, None)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
