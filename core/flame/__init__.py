"""FLAME in the core: numpy loaders, the torch layer, UV template and a synthetic stand-in head.

Typical use::

    data = load_flame(path)                       # FlameData (numpy), cached as .npz after the first load
    model = FlameModel(data, n_shape=300, n_expr=100)
    out = model(FlameParams(shape=..., expression=..., jaw_pose=...))
    uv_template = load_uv_template(obj_path)      # UVTemplate

``synthetic_flame("small" | "full", seed)`` returns a FLAME-format head and UV template for tests and demos.
"""

from .data import JOINT_NAMES, N_JOINTS, FlameData
from .io import (
    LandmarkEmbedding,
    load_eyelids,
    load_flame,
    load_landmark_embedding,
    read_flame,
    write_flame_pickle,
)
from .lbs import batch_rigid_transform, blend_shapes, lbs, vertices2joints, vertices2landmarks
from .model import FlameModel, FlameOutput, FlameParams
from .rotation import (
    as_rotation_matrix,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)
from .synthetic import synthetic_flame, write_synthetic_flame
from .uv import UVTemplate, load_uv_template, mirror_vertex_index

__all__ = [
    "FlameData",
    "JOINT_NAMES",
    "N_JOINTS",
    "FlameModel",
    "FlameOutput",
    "FlameParams",
    "LandmarkEmbedding",
    "UVTemplate",
    "as_rotation_matrix",
    "axis_angle_to_matrix",
    "batch_rigid_transform",
    "blend_shapes",
    "lbs",
    "load_eyelids",
    "load_flame",
    "load_landmark_embedding",
    "load_uv_template",
    "read_flame",
    "matrix_to_axis_angle",
    "matrix_to_rotation_6d",
    "mirror_vertex_index",
    "rotation_6d_to_matrix",
    "synthetic_flame",
    "vertices2joints",
    "vertices2landmarks",
    "write_flame_pickle",
    "write_synthetic_flame",
]
