"""Ground truth for fitting: random FLAME heads with known parameters, their rendered maps, and fit errors.

A :class:`TruthHead` (:func:`make_head`) is rendered by :func:`render_truth` into the maps the network would
predict (UV, canonical normals, mask) with the reference camera (``Camera.of``: the default focal, centred principal point);
:func:`corrupt` degrades them, :func:`inputs` wraps them as the ``Prediction`` and ``FaceCrop`` that
``core.fit.fit`` takes, and :func:`errors_mm` compares a fit with the truth after rigid (or similarity) alignment.

Shapes: ``S`` map size in pixels (512, the network's output size, by default), ``V`` vertices, ``F`` faces.
Every function is deterministic: randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from core.fit import PoseInit, render_maps
from core.flame import FlameModel, FlameParams, UVTemplate, axis_angle_to_matrix
from core.render.camera import Camera, world_to_camera
from evaluation.metrics import rigid_align

MAP_SIZE = 512  # the network's output size


@dataclass(frozen=True)
class TruthHead:
    """A head with known FLAME parameters and pose (``world = R v + t``).

    Attributes
    ----------
    params : FlameParams
        Batch 1: ``shape`` (1, n_shape), ``expression`` (1, n_expr), ``jaw_pose`` (1, 3), ``neck_pose`` (1, 3),
        in the FLAME model's dtype.
    rotation : np.ndarray
        (3, 3) float64 head rotation R.
    translation : np.ndarray
        (3,) float64 head translation t, metres.
    yaw_deg : float
        The yaw angle of ``rotation``, degrees.
    expressive : bool
        False when expression and jaw are zero.
    """

    params: FlameParams
    rotation: np.ndarray
    translation: np.ndarray
    yaw_deg: float
    expressive: bool


def make_head(
    rng: np.random.Generator, flame: FlameModel, expressive: bool, *, yaw_deg: float = 35.0, pitch_deg: float = 15.0,
    neck: float = 0.1, eyes: float = 0.0, eyelids: float = 0.0,
) -> TruthHead:
    """Random truth: identity N(0, 1) x 0.7, expression N(0, 1) x 0.6 (or zero), jaw, neck, yaw/pitch pose, and
    optionally eye rotations and eyelids.

    Draws from ``rng`` in a fixed order (shape, expression, jaw, neck, yaw, pitch, roll, translation, then eyes and
    eyelids when asked for), so one seed gives the same sequence of heads on every run, and the defaults the same
    heads as before the eye options existed.

    Parameters
    ----------
    rng : np.random.Generator
        Source of all randomness.
    flame : FlameModel
        Gives the numbers of shape and expression components and the parameters' dtype.
    expressive : bool
        Draw expression and jaw opening (up to 0.2 rad); otherwise both are zero.
    yaw_deg, pitch_deg : largest head yaw and pitch (uniform in ±)
    neck : largest neck rotation per axis (radians)
    eyes : largest eye rotation about x and y (radians; both eyes look the same way); 0: none drawn
    eyelids : largest eyelid coefficient of expressive heads (uniform in [0, eyelids]); 0: none drawn

    Returns
    -------
    TruthHead
        Roll ±5°, translation ±2 cm in x and y, ±10 cm in z.
    """
    n_s, n_e = flame.n_shape, flame.n_expr
    shape = rng.normal(size=(1, n_s)) * 0.7
    expr = rng.normal(size=(1, n_e)) * 0.6 if expressive else np.zeros((1, n_e))
    jaw = np.array([[rng.uniform(0.0, 0.2), 0.0, 0.0]]) if expressive else np.zeros((1, 3))
    neck = rng.uniform(-neck, neck, size=(1, 3))
    yaw = np.radians(rng.uniform(-yaw_deg, yaw_deg))
    pitch, roll = np.radians(rng.uniform(-pitch_deg, pitch_deg)), np.radians(rng.uniform(-5, 5))
    rot = axis_angle_to_matrix(torch.tensor([pitch, yaw, roll])).numpy().astype(np.float64)
    t = np.array([rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(-0.1, 0.1)])
    dtype = flame.v_template.dtype
    extra = {}
    if eyes > 0:
        gaze = torch.tensor([[rng.uniform(-eyes, eyes), rng.uniform(-eyes, eyes), 0.0]], dtype=dtype)
        extra.update(eye_pose_left=gaze, eye_pose_right=gaze.clone())
    if eyelids > 0 and flame.has_eyelids:
        lids = rng.uniform(0.0, eyelids, size=(1, 2)) if expressive else np.zeros((1, 2))
        extra["eyelids"] = torch.tensor(lids, dtype=dtype)
    params = FlameParams(shape=torch.tensor(shape, dtype=dtype), expression=torch.tensor(expr, dtype=dtype),
                         jaw_pose=torch.tensor(jaw, dtype=dtype), neck_pose=torch.tensor(neck, dtype=dtype), **extra)
    return TruthHead(params, rot, t, float(np.degrees(yaw)), expressive)


def detected_landmarks(
    vertices: np.ndarray, faces: np.ndarray, embedding, rng: np.random.Generator, noise_px: float, size: int = MAP_SIZE
) -> np.ndarray:
    """The 478 MediaPipe landmarks a detector would report for a rendered head: the embedding's points on the posed
    mesh ``vertices`` (V, 3) projected with the reference camera at ``size``, plus Gaussian noise of ``noise_px``
    pixels; (478, 2), NaN where the embedding has no point."""
    points = np.einsum("lk,lkc->lc", embedding.bary, np.asarray(vertices, dtype=np.float64)[faces[embedding.face_idx]])
    xy, _ = Camera.of(size=size).project(world_to_camera(torch.tensor(points)[None]))
    out = np.full((478, 2), np.nan)
    out[embedding.landmark_indices] = xy[0].numpy() + rng.normal(scale=noise_px, size=(len(points), 2))
    return out


def render_truth(
    flame: FlameModel, uv_template: UVTemplate, head: TruthHead, size: int = MAP_SIZE
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Render a truth head with the reference camera and compute its neutral (identity-only) mesh.

    Parameters
    ----------
    flame : FlameModel
    uv_template : UVTemplate
        Same topology as ``flame``.
    head : TruthHead
    size : int
        Map size S in pixels.

    Returns
    -------
    maps : dict of np.ndarray
        :func:`core.fit.render_maps`'s maps: ``uv`` (S, S, 2), ``normals`` (S, S, 3), ``mask`` (S, S) bool,
        ``depth`` (S, S) (inf on background), ``triangle`` (S, S) int64 (-1 on background) and ``vertices``
        (V, 3) the posed world-space vertices.
    neutral : np.ndarray
        (V, 3) the identity-only mesh (zero expression and pose).
    """
    maps = render_maps(flame, uv_template, head.params, head.rotation, head.translation, Camera.of(size=size))
    with torch.no_grad():
        neutral = flame.neutral(head.params.shape)[0].numpy()
    return maps, neutral


def corrupt(maps: dict, rng: np.random.Generator, blur: float, noise: float, outliers: float) -> dict:
    """Gaussian blur (sigma px), additive Gaussian noise (UV units; normals x 5) and a fraction of outlier pixels.

    Parameters
    ----------
    maps : dict
        At least ``uv`` (S, S, 2), ``normals`` (S, S, 3) and ``mask`` (S, S) bool; not modified.
    rng : np.random.Generator
        Source of the noise and the outliers.
    blur : float
        Gaussian sigma in pixels, applied inside the mask (0: none).
    noise : float
        Standard deviation of the UV noise (the normals get 5x that) (0: none).
    outliers : float
        Fraction of mask pixels replaced by random UVs and random normals (0: none).

    Returns
    -------
    dict
        A copy of ``maps`` with ``uv`` (S, S, 2) float32 clipped to [0, 1], ``normals`` (S, S, 3) float32 unit
        vectors and the unchanged ``mask``.
    """
    uv, n, mask = maps["uv"].copy(), maps["normals"].copy(), maps["mask"].copy()
    if blur > 0:
        w = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur)[..., None]
        uv = cv2.GaussianBlur(uv * mask[..., None], (0, 0), blur) / np.maximum(w, 1e-6)
        n = cv2.GaussianBlur(n * mask[..., None], (0, 0), blur)
    if noise > 0:
        uv = uv + rng.normal(scale=noise, size=uv.shape)
        n = n + rng.normal(scale=5 * noise, size=n.shape)
    if outliers > 0:
        bad = (rng.uniform(size=mask.shape) < outliers) & mask
        uv[bad] = rng.uniform(0, 1, size=(int(bad.sum()), 2))
        n[bad] = rng.normal(size=(int(bad.sum()), 3))
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    return {**maps, "uv": np.clip(uv, 0, 1).astype(np.float32), "normals": n.astype(np.float32), "mask": mask}


def inputs(
    maps: dict, eyeball_faces: np.ndarray, face_faces: np.ndarray | None = None
) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Prediction- and FaceCrop-like inputs (duck-typed) for ``core.fit.fit`` from rendered maps.

    The crop masks are what a face segmenter gives: the eyeballs are "eyes", the rest of the head "skin" (the
    fit then keeps the eyeballs out of the UV and normal terms, as with a real photo). With ``face_faces`` only
    those triangles are "skin", as the product's face-oval masks (no neck, scalp or ears); the rest of the head
    is then neither skin nor background. The crop is the whole map (identity crop transform).

    Parameters
    ----------
    maps : dict
        ``uv`` (S, S, 2), ``normals`` (S, S, 3), ``mask`` (S, S) bool and ``triangle`` (S, S) int64 as from
        :func:`render_truth` (or :func:`corrupt`).
    eyeball_faces : np.ndarray
        (K,) indices of the eyeball triangles.
    face_faces : np.ndarray, optional
        (L,) indices of the triangles that count as skin; every non-eyeball triangle when omitted.

    Returns
    -------
    prediction : SimpleNamespace
        ``uv``, ``normals``, ``mask`` (the maps' arrays).
    crop : SimpleNamespace
        ``masks`` {"skin", "eyes", "background"} of (S, S) bool, ``landmarks`` None, ``transform`` (x0 = y0 = 0,
        size = out_size = S) and ``photo_size`` (S, S).
    """
    size = maps["mask"].shape[0]
    pred = SimpleNamespace(uv=maps["uv"], normals=maps["normals"], mask=maps["mask"])
    eyes = np.isin(maps["triangle"], eyeball_faces)
    skin = maps["mask"] & ~eyes
    if face_faces is not None:
        skin &= np.isin(maps["triangle"], face_faces)
    crop = SimpleNamespace(
        masks={"skin": skin, "eyes": eyes, "background": ~maps["mask"]}, landmarks=None,
        transform=SimpleNamespace(x0=0.0, y0=0.0, size=float(size), out_size=size), photo_size=(size, size),
    )
    return pred, crop


def errors_mm(
    result, truth_posed: np.ndarray, truth_neutral: np.ndarray, region: np.ndarray, with_scale: bool = False,
    within: np.ndarray | None = None,
) -> tuple[float, float]:
    """Mean region vertex error (mm) of the posed and neutral meshes after rigid (or similarity) alignment.

    Each mesh is aligned to its truth over ``region`` (:func:`evaluation.metrics.rigid_align`), and the error is
    averaged over ``within`` (a subset of the region; default all of it).

    Parameters
    ----------
    result
        A fit result with ``vertices_posed`` and ``vertices_neutral``, (V, 3) metres each (``FitResult``).
    truth_posed, truth_neutral : np.ndarray
        (V, 3) true posed (world-space) and neutral vertices, metres.
    region : np.ndarray
        (V,) bool vertices that are aligned and scored.
    with_scale : bool
        Similarity instead of rigid alignment (removes the head's global size).
    within : np.ndarray, optional
        (V,) bool; only vertices in ``region & within`` enter the mean.

    Returns
    -------
    (posed, neutral) : tuple of float
        Mean Euclidean errors in millimetres.
    """
    out = []
    for pred, ref in ((result.vertices_posed, truth_posed), (result.vertices_neutral, truth_neutral)):
        tr = rigid_align(pred[region], ref[region], with_scale=with_scale)
        err = np.linalg.norm(tr.apply(pred[region]) - ref[region], axis=1)
        out.append(float((err if within is None else err[within[region]]).mean() * 1000))
    return out[0], out[1]


def visible_vertices(maps: dict) -> np.ndarray:
    """Vertices in front of the rendered depth at their pixel (seen in the input image).

    Parameters
    ----------
    maps : dict
        ``vertices`` (V, 3) world space and ``depth`` (S, S) as from :func:`render_truth` (reference camera).

    Returns
    -------
    np.ndarray
        (V,) bool; a vertex counts as seen when it is less than 2 mm behind the depth map at its pixel.
    """
    size = maps["depth"].shape[0]
    cam = world_to_camera(torch.as_tensor(maps["vertices"], dtype=torch.float64))[None]
    xy, depth = Camera.of(size=size).project(cam)
    ix = np.clip(np.floor(xy[0, :, 0].numpy()).astype(int), 0, size - 1)
    iy = np.clip(np.floor(xy[0, :, 1].numpy()).astype(int), 0, size - 1)
    return depth[0].numpy() < maps["depth"][iy, ix] + 0.002


def yawed(rotation: np.ndarray, translation: np.ndarray, yaw_deg: float) -> PoseInit:
    """The true pose with an extra yaw about the head's vertical axis (an initial-pose error).

    Parameters
    ----------
    rotation : np.ndarray
        (3, 3) true head rotation.
    translation : np.ndarray
        (3,) true head translation.
    yaw_deg : float
        Extra yaw in degrees, applied in the head's own frame (``rotation @ R_y``).

    Returns
    -------
    PoseInit
        Method "bench", no PnP pairs or inliers.
    """
    extra = axis_angle_to_matrix(torch.tensor([0.0, np.radians(yaw_deg), 0.0])).numpy().astype(np.float64)
    return PoseInit(rotation @ extra, translation, "bench", 0, 0)


def make_sequence(
    rng: np.random.Generator, flame: FlameModel, frames: int, *, fps: float = 25.0, yaw_deg: float = 25.0,
    pitch_deg: float = 10.0, shape: np.ndarray | None = None,
) -> list[TruthHead]:
    """A head moving along smooth known trajectories, as in a talking-head clip: one identity (N(0, 1) x 0.7, or
    ``shape``), and per frame a head pose, expression, jaw, neck, eyes and eyelids, each a sum of two sinusoids
    with random frequencies, phases and weights.

    Frequencies: head pose and neck 0.1-0.5 Hz (a head turning and nodding over seconds: at most about 3 degrees
    per frame at 25 fps), expression 0.2-1.5 Hz, jaw 0.3-2 Hz (speech), eyes and eyelids 0.2-1 Hz (no blinks).
    Amplitudes: yaw ``yaw_deg``, pitch ``pitch_deg``, roll 4 degrees, translation 1.5 / 1 / 3 cm (x, y, depth),
    expression 0.5 about a random base (0.3), jaw opening 0.12 +- 0.12 rad, neck 0.08 rad, eyes 0.2 rad, eyelids
    0.3 +- 0.4.

    Parameters
    ----------
    rng : source of all randomness
    flame : gives the component counts and dtype
    frames : number of frames T; fps : frames per second
    yaw_deg, pitch_deg : amplitudes of the head's yaw and pitch (degrees)
    shape : (1, Ns) identity to use instead of drawing one

    Returns
    -------
    T :class:`TruthHead`, all expressive, sharing ``params.shape``.
    """
    n_s, n_e = flame.n_shape, flame.n_expr
    dtype = flame.v_template.dtype
    shape = rng.normal(size=(1, n_s)) * 0.7 if shape is None else np.asarray(shape, dtype=np.float64).reshape(1, n_s)
    time_s = np.arange(frames) / fps

    def wave(amplitude, hz, size=()) -> np.ndarray:
        """(T, *size) weighted sum of two sinusoids with frequencies in ``hz`` and random phases, peak <= amplitude."""
        f = rng.uniform(*hz, size=(2, *size))
        phase = rng.uniform(0, 2 * np.pi, size=(2, *size))
        w = rng.uniform(0.3, 0.7, size=(2, *size))
        t = time_s.reshape(-1, *([1] * len(size)))
        return amplitude * sum(w[k] * np.sin(2 * np.pi * f[k] * t + phase[k]) for k in range(2))

    slow, face = (0.1, 0.5), (0.2, 1.0)
    expr = rng.normal(size=n_e) * 0.3 + wave(0.5, (0.2, 1.5), (n_e,))
    jaw = np.clip(0.12 + wave(0.12, (0.3, 2.0)), 0.0, 0.3)
    neck = wave(0.08, slow, (3,))
    eyes = wave(0.2, face, (2,))
    lids = np.clip(0.3 + wave(0.4, face, (2,)), 0.0, 1.0)
    yaw, pitch, roll = wave(np.radians(yaw_deg), slow), wave(np.radians(pitch_deg), slow), wave(np.radians(4.0), slow)
    trans = np.stack([wave(0.015, slow), wave(0.01, slow), wave(0.03, slow)], 1)
    heads = []
    for k in range(frames):
        rot = axis_angle_to_matrix(torch.tensor([pitch[k], yaw[k], roll[k]])).numpy().astype(np.float64)
        gaze = torch.tensor([[eyes[k, 0], eyes[k, 1], 0.0]], dtype=dtype)
        extra = {"eye_pose_left": gaze, "eye_pose_right": gaze.clone()}
        if flame.has_eyelids:
            extra["eyelids"] = torch.tensor(lids[k][None], dtype=dtype)
        params = FlameParams(shape=torch.tensor(shape, dtype=dtype), expression=torch.tensor(expr[k][None], dtype=dtype),
                             jaw_pose=torch.tensor([[jaw[k], 0.0, 0.0]], dtype=dtype),
                             neck_pose=torch.tensor(neck[k][None], dtype=dtype), **extra)
        heads.append(TruthHead(params, rot, trans[k], float(np.degrees(yaw[k])), True))
    return heads


def jitter_mm(vertices: np.ndarray) -> float:
    """RMS second difference of vertex positions over frames, ``sqrt(mean ||v[t+1] - 2 v[t] + v[t-1]||^2)`` in mm,
    of (T, V, 3) metres (T >= 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.shape[0] < 3:
        raise ValueError("Jitter needs at least three frames.")
    second = v[2:] - 2 * v[1:-1] + v[:-2]
    return float(np.sqrt((second ** 2).sum(-1).mean()) * 1000)
