"""Landmark embeddings: where a model's landmarks sit on its mesh, from the user's FLAME download or derived.

The embedding (see :mod:`core.flame.landmarks` for the landmarks themselves) comes, in order, from:

1. a file from the user's FLAME download, found beside the model file (:data:`EMBEDDING_FILES`):
   ``mediapipe_landmark_embedding.npz`` (metrical-tracker: ``lmk_face_idx`` (105,), ``lmk_b_coords`` (105, 3),
   ``landmark_indices`` (105,) MediaPipe ids), ``landmark_embedding.npy`` (DECA / MICA: a pickled dict with
   ``full_lmk_faces_idx`` (1, 68) and ``full_lmk_bary_coords`` (1, 68, 3): the iBUG 68 points) or
   ``flame_static_embedding.pkl`` (RingNet: ``lmk_face_idx`` (51,), ``lmk_b_coords`` (51, 3): iBUG 17-67).
   These are licensed with FLAME, so the project never ships them;
2. otherwise it is derived at run time from the model itself and MediaPipe's face mesh (in the mediapipe wheel,
   Apache-2.0): the mean head is rendered with the core rasterizer from three directions (frontal and 20 degrees
   to each side; skin-coloured, white eyeballs with a dark iris), MediaPipe's face mesh runs on each render, and
   each of the 478 landmarks is taken back onto the triangle under it in the view that sees that triangle most
   frontally. The result is cached per model (:func:`resolve_embedding`).

Without mediapipe (Python 3.13) no landmarks are detected in photos either, so the fit runs without these terms.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import AssetInvalidError, Pixel3DMMError
from .flame.data import FlameData
from .flame.io import LandmarkEmbedding, load_landmark_embedding

__all__ = ["EMBEDDING_FILES", "derive_embedding", "resolve_embedding"]

log = logging.getLogger(__name__)

#: Embedding files accepted from the user's FLAME download (looked for next to the model file), in order.
EMBEDDING_FILES = ("mediapipe_landmark_embedding.npz", "landmark_embedding.npy", "flame_static_embedding.pkl")
#: Version of the derivation (part of its cache key).
_DERIVATION_VERSION = 1
#: Yaw angles (radians) of the derivation's renders; image size; camera distance (metres).
_VIEWS = (0.0, -0.35, 0.35)
_RENDER_SIZE = 512
_DISTANCE = 1.0


# ------------------------------------------------------------------------------------------- derivation
def _render(data: FlameData, yaw: float):
    """Render the mean head turned by ``yaw`` for MediaPipe: (S, S, 3) uint8 RGB, its rasterization, its
    camera-space vertices and the vertices' unit normals in camera space."""
    import torch

    from .fit.maps import vertex_normals
    from .fit.regions import derive_regions
    from .flame.rotation import axis_angle_to_matrix
    from .render import Camera, interpolate, rasterize, world_to_camera

    v = torch.as_tensor(data.v_template, dtype=torch.float64)
    faces = torch.as_tensor(data.faces)
    regions = derive_regions(data.v_template, data.faces, data.J_regressor)
    eyes = np.asarray(data.J_regressor, dtype=np.float64)[3:5] @ data.v_template
    centre = torch.as_tensor(eyes.mean(0) - np.array([0.0, 0.03, 0.0]))  # between the eyes, a little lower
    rot = axis_angle_to_matrix(torch.tensor([0.0, yaw, 0.0], dtype=torch.float64))
    world = ((v - centre) @ rot.T)[None] + torch.tensor([0.0, 0.0, 1.0 - _DISTANCE])
    cam = world_to_camera(world)
    camera = Camera.of(size=_RENDER_SIZE)
    rast = rasterize(camera.clip(cam), faces, (_RENDER_SIZE, _RENDER_SIZE), cull_back=True)
    normals = vertex_normals(cam, faces)
    # Eyeballs white, with a dark iris around each eyeball's front-most direction.
    eyeball = torch.as_tensor(regions.eyeballs, dtype=torch.float64)
    iris = torch.zeros_like(eyeball)
    for j, centre_eye in enumerate(eyes):
        members = np.flatnonzero(regions.eyeballs & (np.sign(data.v_template[:, 0]) == np.sign(centre_eye[0])))
        if members.size:
            d = data.v_template[members] - centre_eye
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            iris[torch.as_tensor(members)] = torch.as_tensor((d[:, 2] > math.cos(math.radians(38.0))).astype(np.float64))
    attr = torch.cat([normals[0], eyeball[:, None], iris[:, None]], -1)
    img = interpolate(attr, rast, faces)[0]
    n = torch.nn.functional.normalize(img[..., :3], dim=-1)
    light = torch.tensor([0.25, 0.35, 0.9], dtype=torch.float64)
    shade = (n @ (light / light.norm())).clamp(0.0, 1.0) * 0.75 + 0.25
    colour = torch.tensor([0.85, 0.66, 0.55], dtype=torch.float64)
    colour = torch.where(img[..., 3:4] > 0.5, torch.tensor([0.95, 0.95, 0.95], dtype=torch.float64), colour)
    colour = torch.where(img[..., 4:5] > 0.5, torch.tensor([0.18, 0.12, 0.08], dtype=torch.float64), colour)
    cov = rast.coverage()[0][..., None]
    rgb = (shade[..., None] * colour) * cov + (1.0 - cov) * torch.tensor([0.35, 0.38, 0.42], dtype=torch.float64)
    image = np.ascontiguousarray((rgb.numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    return image, rast, cam[0], normals[0]


def derive_embedding(data: FlameData) -> LandmarkEmbedding:
    """Derive the 478 MediaPipe landmarks' places on this model's mean head (see the module docstring).

    Raises
    ------
    Pixel3DMMError : mediapipe is unavailable, or found no face in any render.
    """
    import torch

    from .preprocess import _mediapipe
    from .render import Camera, pixel_barycentrics

    faces = np.asarray(data.faces, dtype=np.int64)
    best_face = np.full(478, -1, dtype=np.int64)
    best_bary = np.zeros((478, 3))
    best_facing = np.full(478, -np.inf)
    found_any = False
    for yaw in _VIEWS:
        image, rast, cam, normals = _render(data, yaw)
        points = _mediapipe.face_mesh(image)
        if points is None:
            log.info("MediaPipe found no face in the %.0f-degree render of %s.", math.degrees(yaw), data.source)
            continue
        found_any = True
        tri = rast.triangle_ids()[0].numpy()
        ix = np.clip(np.floor(points[:, 0]).astype(int), 0, _RENDER_SIZE - 1)
        iy = np.clip(np.floor(points[:, 1]).astype(int), 0, _RENDER_SIZE - 1)
        tid = tri[iy, ix]
        hit = np.flatnonzero(tid >= 0)
        if hit.size == 0:
            continue
        pid = torch.as_tensor(iy[hit] * _RENDER_SIZE + ix[hit])
        clip = Camera.of(size=_RENDER_SIZE).clip(cam[None])
        uv = pixel_barycentrics(clip, torch.as_tensor(faces), pid, torch.as_tensor(tid[hit]), (_RENDER_SIZE,) * 2)
        uv = uv.numpy()
        bary = np.stack([uv[:, 0], uv[:, 1], 1.0 - uv[:, 0] - uv[:, 1]], 1)
        corners = cam.numpy()[faces[tid[hit]]]
        fn = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        point = np.einsum("nc,ncd->nd", bary, corners)
        facing = -np.einsum("nd,nd->n", fn / np.linalg.norm(fn, axis=1, keepdims=True),
                            point / np.linalg.norm(point, axis=1, keepdims=True))
        better = facing > best_facing[hit]
        rows = hit[better]
        best_face[rows], best_bary[rows], best_facing[rows] = tid[hit][better], bary[better], facing[better]
    if not found_any:
        raise Pixel3DMMError(
            f"MediaPipe found no face in renders of {data.describe()}, so no landmark embedding could be derived; "
            "put FLAME's landmark_embedding.npy next to the model file or fit without landmarks."
        )
    keep = np.flatnonzero(best_face >= 0)
    return LandmarkEmbedding(
        face_idx=best_face[keep], bary=np.clip(best_bary[keep], 0.0, 1.0), landmark_indices=keep.astype(np.int64),
        kind="mediapipe", source=f"derived from {data.source} with MediaPipe's face mesh",
    )


def _cache_file(data: FlameData, cache_dir: Path) -> Path:
    h = hashlib.sha256()
    for array in (data.v_template, data.faces, data.J_regressor):
        h.update(np.ascontiguousarray(array).tobytes())
    return cache_dir / "landmarks" / f"derived-v{_DERIVATION_VERSION}-{h.hexdigest()[:20]}.npz"


def _save(embedding: LandmarkEmbedding, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, lmk_face_idx=embedding.face_idx, lmk_b_coords=embedding.bary,
                     landmark_indices=embedding.landmark_indices)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_embedding(
    data: FlameData, model_path: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[LandmarkEmbedding | None, str]:
    """The landmark embedding for this model and one sentence saying where it came from (or why there is none).

    Looks for :data:`EMBEDDING_FILES` next to ``model_path``; otherwise derives one (cached in ``cache_dir``,
    default :func:`core.assets.cache_dir`). A file that does not fit the model's mesh is reported and skipped.
    """
    if model_path is not None:
        folder = Path(model_path).parent
        for name in EMBEDDING_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                embedding = load_landmark_embedding(path)
                if embedding.face_idx.size and int(embedding.face_idx.max()) >= len(data.faces):
                    raise AssetInvalidError(f"{path} indexes triangles the FLAME model does not have")
            except AssetInvalidError as exc:
                log.warning("Skipping the landmark embedding %s: %s", path, exc)
                continue
            return embedding, f"Landmark embedding: {path.name} from the FLAME download ({len(embedding.face_idx)} points)."
    if cache_dir is None:
        from .assets import cache_dir as default_cache_dir

        cache_dir = default_cache_dir()
    cached = _cache_file(data, Path(cache_dir))
    if cached.is_file():
        try:
            embedding = load_landmark_embedding(cached)
            return embedding, "Landmark embedding: derived from the FLAME model with MediaPipe (cached)."
        except AssetInvalidError as exc:
            log.warning("Ignoring the unusable landmark cache %s (%s)", cached, exc)
    try:
        embedding = derive_embedding(data)
    except Pixel3DMMError as exc:
        return None, f"No landmark embedding ({exc}); the fit runs without landmark terms."
    try:
        _save(embedding, cached)
    except OSError as exc:
        log.warning("Could not cache the landmark embedding at %s (%s)", cached, exc)
    return embedding, "Landmark embedding: derived from the FLAME model with MediaPipe's face mesh."
