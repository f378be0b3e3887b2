"""Fitting configuration: frozen dataclasses, the stage table and the fast / balanced / best presets.

``FitConfig()`` follows the Pixel3DMM tracker for a single image (``configs/tracking.yaml``): a camera stage of
500 Adam steps, then a per-image stage of 800 steps with the shape free, at a fitting resolution of 256 pixels.
The presets add this project's choices (fewer Adam steps, a Levenberg-Marquardt refinement, the robust dense UV
term, a widening camera-stage acceptance radius). Every deviation from the reference is a named option here,
documented where it is declared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..render.camera import DEFAULT_FOCAL

__all__ = [
    "StageSpec", "FitConfig", "PARAM_GROUPS", "LOSS_TERMS", "PRESETS", "LANDMARK_PRESETS", "LANDMARK_WEIGHTS",
    "LANDMARK_ONLY_WEIGHTS", "BOUNDS", "BOUNDS_WEIGHT", "SHAPE_PRIORS", "SHAPE_LR", "REFERENCE_SHAPE_LR",
    "DENSE_UV_MAX", "CAMERA_ACCEPT_QUANTILE", "REFINE_PRIOR_SCALE", "PRIOR_TERMS", "SIZE_MARGINAL",
]

#: Names of the optimisable parameter groups.
PARAM_GROUPS = (
    "translation", "rotation", "focal", "principal_point", "shape", "expression", "jaw", "neck", "eyes", "eyelids",
)

#: Names of the weighted loss terms (``FitResult.loss_history`` uses the same keys plus ``total``).
LOSS_TERMS = (
    "uv_corr",  # UV -> 2D vertex correspondence, squared form (reference loss/uv with uv_l2)
    "uv_corr_l1",  # the same correspondences, L1 form (reference camera stage)
    "uv_dense",  # dense predicted vs rendered UV (loss/uv_pixel)
    "normal",  # predicted vs rendered canonical normals (loss/normal)
    "sil",  # rendered face region on background / neck pixels (loss/sil)
    # Landmarks (MediaPipe's face mesh through the landmark embedding, see core.flame.landmarks):
    "lmk_static",  # the reference's 68 landmarks without the contour (iBUG 17-67), camera stage
    "lmk_eye",  # eye contours, iBUG 36-47 (reference lmk_eye2)
    "lmk_lid",  # eyelid closure: upper minus lower lid points (reference lmk_eye)
    "lmk_iris",  # iris centres (MediaPipe 468 / 473, reference WFLW 96 / 97)
    "lmk_mouth",  # lips, iBUG 48-67 (off by default, as in the reference)
    "lmk_mouth_lid",  # lip closure: upper minus lower inner-lip points (off by default)
    "lmk_contour",  # face contour, iBUG 0-16 (off by default)
    "lmk_dense",  # every other MediaPipe face point (the network-free mode)
    "reg_expression", "reg_shape", "reg_shape_general", "reg_jaw", "reg_neck", "reg_eyes", "reg_eye_sym",
    "reg_mirror", "reg_pp",
    "reg_bounds",  # plausibility bounds (BOUNDS)
    "size_marginal",  # the head's size marginalised along the scale the image cannot see (SIZE_MARGINAL)
)

#: Landmark weights of the reference (``tracking.yaml``): w_lmks 1000 times 5 for the eye contours, 500 for the lid
#: closure and 50 for each iris; its camera stage weighs the 68 landmarks 3000; mouth (w_lmks_mouth) and contour
#: are off. (The reference's two iris terms are one here, a mean over both eyes.) Deviation: the lid closure weighs
#: 1000 times 5, not 500 (:data:`REFERENCE_LID_WEIGHT`): at the reference's weight the noise of detected lids
#: (1.5 px) moved the head's size and distance (ground truth, wide poses, paired on 3 heads: depth error 42-52 mm,
#: posed 2.9-4.4 mm, against 4-7 mm and 0.22-0.55 mm at 5000) and the eyelids came out worse (coefficient error
#: 0.10-0.44 against 0.02-0.04); docs/PERFORMANCE.md, "Landmarks".
REFERENCE_LID_WEIGHT = 1000.0 * 500.0
LANDMARK_WEIGHTS = {"lmk_eye": 1000.0 * 5.0, "lmk_lid": 1000.0 * 5.0, "lmk_iris": 1000.0 * 50.0}
#: Human and photographic ranges (this project's choice; the reference has none): jaw opening about x and
#: sideways rotations (radians), neck and eye rotations per axis (radians), identity coefficients (standard
#: deviations), the normalised focal (field of view 4.8-53 degrees) and the head's distance from the camera (metres).
BOUNDS = {
    "jaw_open": (-0.1, 0.6), "jaw_side": 0.2, "neck": 0.6, "eyes": 0.6, "shape": 3.0, "focal": (1.0, 12.0),
    "distance": (0.2, 5.0),
}
#: Weight of the squared excess beyond :data:`BOUNDS` in every stage.
BOUNDS_WEIGHT = 1.0e4

_REG_WEIGHTS = {
    "reg_expression": 0.05,
    "reg_jaw": 0.01,
    "reg_neck": 0.1,
    "reg_eyes": 0.01,
    "reg_eye_sym": 0.1,
    "reg_mirror": 5000.0,
    "reg_pp": 1.0,
}

#: Identity priors: (w_shape, w_shape_general). Both pull towards zero here, as there is no MICA identity.
#: "tracking" is ``configs/tracking.yaml`` (whose w_shape pulls towards MICA's code); "no_mica" is what the
#: reference README prescribes when MICA is ignored (``ignore_mica=True w_shape=0.01 w_shape_general=0.001``).
#: Measurements behind this and the other defaults here: docs/PERFORMANCE.md, "Fitting defaults".
SHAPE_PRIORS: dict[str, tuple[float, float]] = {"tracking": (0.2, 0.05), "no_mica": (0.01, 0.001)}
#: Shape learning rate of the image stage (the reference's: 2e-3).
REFERENCE_SHAPE_LR = 2e-3
SHAPE_LR = 0.03
#: The regularisers that say what a typical head looks like (identity, expression, left-right symmetry), as opposed
#: to those that keep joints and the camera in range.
PRIOR_TERMS = ("reg_shape", "reg_shape_general", "reg_expression", "reg_mirror")
#: The presets' Levenberg-Marquardt stage weighs :data:`PRIOR_TERMS` by this factor times the image stage's weights
#: (1: the reference's weights).
REFINE_PRIOR_SCALE = 1.0
#: Weight of the presets' ``size_marginal`` term in their Levenberg-Marquardt stage (0: the reference's joint
#: maximum). A larger head further away gives the same image, so along that scaling the data terms are flat and
#: only the priors decide the size; their joint maximum sits where the identity and expression coefficients, which
#: grow with the head, are smallest, so heads come out small. The size's marginal posterior carries the volume of
#: the k coefficients the image determines, which grows as size^k: the term adds ``-kappa log(distance)``, kappa
#: the temperature times k, estimated as twice the value of those priors at the stage's start
#: (:meth:`.objective.Objective.set_size_kappa`), times this weight. Measurements: docs/PERFORMANCE.md, "Head size
#: and distance".
SIZE_MARGINAL = 1.0
#: The presets' ``FitConfig.dense_uv_max`` (the reference keeps every pixel: None).
DENSE_UV_MAX = 0.1
#: The presets' ``FitConfig.camera_accept_quantile`` (the reference's fixed radius: None).
CAMERA_ACCEPT_QUANTILE = 0.5
#: The presets' ``FitConfig.pose_frame`` (the reference's is "root").
POSE_FRAME = "neck"


@dataclass(frozen=True)
class StageSpec:
    """One optimisation stage.

    Attributes
    ----------
    name : str
        ``"camera"`` or ``"image"`` (used in progress reports and the loss history).
    steps : int
        Number of Adam steps.
    lr : mapping of parameter group -> learning rate
        Groups absent from the mapping stay fixed in this stage.
    weights : mapping of loss term -> weight
        Terms absent or with weight 0 are not computed.
    lr_decay_at : int or None
        Step at which every learning rate is multiplied by ``lr_decay`` (StepLR as in the reference).
    lr_decay : float
    method : str
        ``"adam"`` (the reference's optimiser) or ``"lm"``: Levenberg-Marquardt iterations on the same loss, with
        the L1 normal term reweighted to least squares at each iteration (see :mod:`.refine`). For ``"lm"`` the
        keys of ``lr`` name the free groups and its values are not used; each step is one linearisation.
    """

    name: str
    steps: int
    lr: Mapping[str, float]
    weights: Mapping[str, float]
    lr_decay_at: int | None = None
    lr_decay: float = 0.1
    method: str = "adam"

    def __post_init__(self) -> None:
        unknown = set(self.lr) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"Unknown parameter groups {sorted(unknown)} in stage {self.name!r}.")
        unknown = set(self.weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"Unknown loss terms {sorted(unknown)} in stage {self.name!r}.")
        if self.steps < 0:
            raise ValueError("A stage needs a non-negative number of steps.")
        if self.method not in ("adam", "lm"):
            raise ValueError(f"Unknown optimiser {self.method!r} in stage {self.name!r}; use 'adam' or 'lm'.")

    def scaled(self, factor: float) -> "StageSpec":
        """The same stage with ``steps`` (and the decay step) scaled by ``factor``."""
        steps = max(1, int(round(self.steps * factor)))
        decay = None if self.lr_decay_at is None else max(1, int(round(self.lr_decay_at * factor)))
        return dataclasses.replace(self, steps=steps, lr_decay_at=decay)


def _camera_stage(steps: int = 500) -> StageSpec:
    # Reference: Adam t 1e-3, R 5e-3, fl 2e-2, pp 1e-4, StepLR at 375 (x0.1); 68 landmarks x3000 for steps 0-250,
    # then UV correspondence L1 x1000; pp regulariser. Here the pose is initialised by PnP, and the whole stage uses
    # both the correspondences and the landmarks (without the contour, whose points depend on the view).
    return StageSpec(
        name="camera",
        steps=steps,
        lr={"translation": 1e-3, "rotation": 5e-3, "focal": 2e-2, "principal_point": 1e-4},
        weights={"uv_corr_l1": 1000.0, "lmk_static": 3000.0, "lmk_iris": LANDMARK_WEIGHTS["lmk_iris"], "reg_pp": 1.0,
                 "reg_bounds": BOUNDS_WEIGHT},
        lr_decay_at=int(round(steps * 0.75)),
    )


def _image_stage(steps: int = 800, shape_prior: str = "no_mica", shape_lr: float = SHAPE_LR) -> StageSpec:
    # Reference per-frame stage for a single image (shape free, freeze_id = False).
    if shape_prior not in SHAPE_PRIORS:
        raise ValueError(f"Unknown shape prior {shape_prior!r}; choose one of {sorted(SHAPE_PRIORS)}.")
    weights = {
        "uv_corr": 100.0 * 2000.0,
        "uv_dense": 100.0 * 2000.0,
        "normal": 1000.0,
        "sil": 500.0 / 10.0,  # sil_super / 10 on the first frame's own stage
        "reg_bounds": BOUNDS_WEIGHT,
    }
    weights.update(LANDMARK_WEIGHTS)
    weights.update(_REG_WEIGHTS)
    weights["reg_shape"], weights["reg_shape_general"] = SHAPE_PRIORS[shape_prior]
    return StageSpec(
        name="image",
        steps=steps,
        lr={
            "expression": 5e-3, "eyes": 5e-3, "eyelids": 2e-3, "translation": 1e-3, "rotation": 5e-3,
            "jaw": 5e-3, "neck": 1e-3, "shape": shape_lr,
        },
        weights=weights,
    )


def _refine_stage(steps: int, image: StageSpec, prior_scale: float = 1.0) -> StageSpec:
    # This project's addition after the reference's image stage: Levenberg-Marquardt on the same terms and free
    # groups (see core/fit/refine.py), the priors (PRIOR_TERMS) weighted prior_scale times the image stage's.
    weights = {k: v * prior_scale if k in PRIOR_TERMS else v for k, v in image.weights.items()}
    weights["size_marginal"] = SIZE_MARGINAL
    return dataclasses.replace(image, name="refine", steps=steps, method="lm", lr_decay_at=None, weights=weights)


@dataclass(frozen=True)
class FitConfig:
    """Typed settings of one fit.

    Attributes
    ----------
    resolution : int
        Fitting resolution S; every map is resized to S x S (reference: 256).
    stages : tuple of StageSpec
        Run in order.
    delta_uv : float
        Squared UV distance below which a vertex keeps its nearest predicted pixel (reference 5e-5).
    dist_uv : float
        Largest L1 pixel distance, in pixels at 256, between a vertex's projection and its target; re-checked
        every step (reference 20).
    visibility_eps : float
        A vertex is visible when its depth is below the rendered depth + this (metres, reference 0.01).
    camera_accept_quantile : float or None
        In the camera stage, widen the ``dist_uv`` acceptance radius to this quantile of the matched vertices'
        current pixel distances when that is larger (None: the reference's fixed radius). From a start 30 degrees
        off, no correspondence lies within 20 pixels and the reference's camera stage does not move the head.
    dense_uv_max : float or None
        UV distance at which a pixel leaves the dense UV term (None: every pixel counts, as in the reference).
        See :func:`.losses.dense_uv`.
    delta_n : float
        Normal pixels whose mean absolute error exceeds this are ignored (reference 0.33).
    eye_blur_size, eye_blur_sigma : int, float
        Gaussian that softens the rendered eye mask damping the normal term (reference 13, 13 at 256).
    include_neck : bool
        Optimise the neck rotation in the image stage (reference default).
    pose_frame : str
        What the free head pose ``(R, t)`` places in the world. ``"root"``: FLAME's root, as in the reference; the
        neck rotation then turns the face about the neck joint, so the face moves whenever the neck does and the
        optimiser must counter-rotate the root to keep it in place. ``"neck"``: the neck joint's frame (the
        reference's "head-centric" camera), so the face stays where the pose puts it and the neck rotation moves
        only the neck below it. Same objective, other coordinates; the presets use "neck" (:data:`POSE_FRAME`).
    fit_focal : bool
        Optimise the normalised focal in the camera stage (reference default). Focal length and head distance
        are nearly interchangeable at this field of view, so a free focal also lets the head's scale drift;
        False keeps ``fl`` at ``focal``.
    focal : float
        Initial normalised focal ``fl`` (``fx = fl * size``; default 2000 / 512, the reference's). The pipeline
        sets it from the photo's EXIF 35 mm-equivalent focal length when there is one, and then holds it.
    principal_point : (float, float)
        Initial principal point ``pp`` (reference convention, see :mod:`core.render.camera`; default centred). The
        tracker starts every frame after the first at the first frame's.
    init : str
        ``"pnp"`` (robust PnP on the UV correspondences, this project's initialisation) or ``"frontal"``
        (identity rotation at the reference camera distance, as the reference starts).
    pnp_reprojection_px : float
        RANSAC inlier threshold in pixels at the fitting resolution.
    cull_back : bool
        Skip back-facing triangles when rendering (default; the reference draws both sides). It differs only where
        the inside of the mesh would be visible, e.g. through the neck opening: on the ground-truth benchmark
        (8 heads) 5 fits were identical and 3 moved by at most 0.07 mm, while the balanced fit ran faster.
    """

    resolution: int = 256
    stages: tuple[StageSpec, ...] = field(default_factory=lambda: (_camera_stage(), _image_stage()))
    delta_uv: float = 5e-5
    dist_uv: float = 20.0
    visibility_eps: float = 0.01
    camera_accept_quantile: float | None = None
    dense_uv_max: float | None = None
    delta_n: float = 0.33
    eye_blur_size: int = 13
    eye_blur_sigma: float = 13.0
    include_neck: bool = True
    pose_frame: str = "root"
    fit_focal: bool = True
    focal: float = DEFAULT_FOCAL
    principal_point: tuple[float, float] = (0.0, 0.0)
    init: str = "pnp"
    pnp_reprojection_px: float = 4.0
    cull_back: bool = True

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError("The fitting resolution must be at least 16 pixels.")
        if self.init not in ("pnp", "frontal"):
            raise ValueError(f"init must be 'pnp' or 'frontal', got {self.init!r}.")
        if self.pose_frame not in ("root", "neck"):
            raise ValueError(f"pose_frame must be 'root' or 'neck', got {self.pose_frame!r}.")
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "principal_point", tuple(float(v) for v in self.principal_point))

    @classmethod
    def landmarks_preset(cls, name: str) -> "FitConfig":
        """The network-free mode: FLAME fitted to the landmarks alone, with the same priors and bounds, by
        Levenberg-Marquardt (pose first, then everything); ``name`` as in :meth:`preset` (:data:`LANDMARK_PRESETS`).
        The focal stays at its default: landmarks hardly tell it from the head's distance."""
        if name not in LANDMARK_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(LANDMARK_PRESETS)}.")
        pose_steps, steps = LANDMARK_PRESETS[name]
        image = _image_stage(1)
        weights = {k: v for k, v in image.weights.items() if k.startswith("reg_")}
        weights.update(LANDMARK_ONLY_WEIGHTS)
        pose = StageSpec(
            "camera", pose_steps, {"translation": 0.0, "rotation": 0.0},
            {k: weights[k] for k in ("lmk_static", "lmk_iris", "reg_bounds")}, method="lm",
        )
        full = StageSpec("landmarks", steps, {g: 0.0 for g in image.lr}, weights, method="lm")
        return cls(stages=(pose, full), pose_frame=POSE_FRAME, fit_focal=False)

    @classmethod
    def preset(
        cls, name: str, *, shape_prior: str = "no_mica", shape_lr: float = SHAPE_LR,
        refine_prior_scale: float = REFINE_PRIOR_SCALE,
    ) -> "FitConfig":
        """``"fast"``, ``"balanced"`` (250 + 500 steps; the reference's 500 + 800 measured no better) or ``"best"``.

        ``shape_prior`` names the identity regulariser weights (:data:`SHAPE_PRIORS`) and ``shape_lr`` the image
        stage's shape learning rate; ``shape_prior="tracking", shape_lr=REFERENCE_SHAPE_LR`` is the reference's
        single-image tracker. ``refine_prior_scale`` weighs the priors (:data:`PRIOR_TERMS`) of the
        Levenberg-Marquardt stage (1: the image stage's weights).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        camera, image, refine = PRESETS[name]
        stages = (_camera_stage(camera), _image_stage(image, shape_prior, shape_lr))
        cfg = cls(
            stages=stages, dense_uv_max=DENSE_UV_MAX, camera_accept_quantile=CAMERA_ACCEPT_QUANTILE, pose_frame=POSE_FRAME,
        )
        return cfg.with_refinement(refine, refine_prior_scale)

    def with_refinement(self, steps: int, prior_scale: float = REFINE_PRIOR_SCALE) -> "FitConfig":
        """A copy whose Levenberg-Marquardt stage has ``steps`` iterations (0: none), after the image stage, with its
        terms and free groups and the priors (:data:`PRIOR_TERMS`) weighted ``prior_scale`` times its weights."""
        if not prior_scale >= 0.0:
            raise ValueError(f"The refinement's prior scale must be a number >= 0, got {prior_scale!r}.")
        stages = [s for s in self.stages if s.method != "lm"]
        image = next((s for s in stages if s.name == "image"), None)
        if steps and image is None:
            raise ValueError("The refinement continues the image stage, and this configuration has none.")
        if steps:
            stages.insert(stages.index(image) + 1, _refine_stage(steps, image, prior_scale))
        return dataclasses.replace(self, stages=tuple(stages))

    def with_steps(self, factor: float) -> "FitConfig":
        """A copy whose stages have ``factor`` times as many steps."""
        return dataclasses.replace(self, stages=tuple(s.scaled(factor) for s in self.stages))

    def with_weights(self, **weights: float) -> "FitConfig":
        """A copy with the given loss-term weights replaced in every stage that uses the term."""
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"Unknown loss terms {sorted(unknown)}.")
        stages = []
        for s in self.stages:
            w = dict(s.weights)
            w.update({k: v for k, v in weights.items() if k in w})
            stages.append(dataclasses.replace(s, weights=w))
        return dataclasses.replace(self, stages=tuple(stages))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; ``FitConfig.from_dict(cfg.to_dict()) == cfg``."""
        d = dataclasses.asdict(self)
        d["stages"] = [dict(dataclasses.asdict(s), lr=dict(s.lr), weights=dict(s.weights)) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FitConfig":
        """Build a config from a dict; unknown keys raise ``ValueError``.

        ``"preset"`` may name the base preset (built with ``"shape_prior"``, ``"shape_lr"`` and
        ``"refine_prior_scale"`` when given); other keys override it.
        """
        data = dict(data)
        options = {k: data.pop(k) for k in ("shape_prior", "shape_lr", "refine_prior_scale") if k in data}
        if options and "preset" not in data:
            raise ValueError(
                "shape_prior, shape_lr and refine_prior_scale choose how a preset is built; give a preset with them."
            )
        base = cls.preset(data.pop("preset"), **options) if "preset" in data else cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"Unknown fit settings {sorted(unknown)}.")
        if "stages" in data:
            stage_names = {f.name for f in dataclasses.fields(StageSpec)}
            stages = []
            for s in data["stages"]:
                bad = set(s) - stage_names
                if bad:
                    raise ValueError(f"Unknown stage settings {sorted(bad)}.")
                stages.append(StageSpec(**s))
            data["stages"] = tuple(stages)
        return dataclasses.replace(base, **data)


#: preset name -> (camera Adam steps, image Adam steps, refine Levenberg-Marquardt iterations); the measurements
#: behind each choice are in docs/PERFORMANCE.md, "Fitting defaults".
PRESETS: dict[str, tuple[int, int, int]] = {
    "fast": (150, 250, 0),
    "balanced": (250, 250, 6),
    "best": (250, 500, 10),
}
#: preset name -> (pose iterations, full iterations) of the network-free mode (:meth:`FitConfig.landmarks_preset`).
LANDMARK_PRESETS: dict[str, tuple[int, int]] = {"fast": (2, 4), "balanced": (3, 6), "best": (4, 10)}
#: Landmark weights of the network-free mode (every group on; this project's choice, see docs/PERFORMANCE.md).
LANDMARK_ONLY_WEIGHTS = {
    "lmk_static": 3000.0, "lmk_dense": 3000.0, "lmk_eye": LANDMARK_WEIGHTS["lmk_eye"],
    "lmk_lid": LANDMARK_WEIGHTS["lmk_lid"], "lmk_iris": LANDMARK_WEIGHTS["lmk_iris"], "lmk_mouth": 3000.0,
    "lmk_mouth_lid": 3000.0, "lmk_contour": 1000.0,
}
