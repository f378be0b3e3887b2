"""FLAME fitting to Pixel3DMM's per-pixel UV and normal predictions.

Public API: :func:`fit` (Prediction + FaceCrop -> :class:`FitResult`), :class:`FitConfig` with the presets
``fast`` / ``balanced`` / ``best`` (see :data:`.config.PRESETS`), :class:`FitProgress`, and :func:`render_maps`
(UV / normal / mask images of given FLAME parameters and camera). :mod:`.objective` states every term once (its
samples, acceptance test, residual, robust form and normaliser); :mod:`.fitter` runs the stages with Adam or
Levenberg-Marquardt (:mod:`.refine`) on it.

Deviations from the reference tracker (``pixel3dmm.md`` section 3), each behind a named option or documented:

* Initial pose: robust PnP on the UV correspondences (``FitConfig.init = "pnp"``); the reference starts frontal
  (``init = "frontal"``) and spends the first half of its camera stage on 68 landmarks, which this project does
  not have, so the camera stage uses the UV correspondences (L1) throughout.
* Landmarks: only the iris term (MediaPipe iris centres vs FLAME vertices 4051 / 4597, real FLAME only); the
  eyelid and mouth landmark terms need FLAME's landmark embedding, which is not part of the model file.
* Shape prior: no MICA identity, so ``reg_shape`` pulls towards zero like ``reg_shape_general`` (one term with their
  summed weight), with the weights
  the reference README gives for runs without MICA (``FitConfig.preset(shape_prior="no_mica")``, default; the
  ``tracking.yaml`` weights are ``shape_prior="tracking"``), and a faster shape learning rate in the image stage
  (``shape_lr``, 0.03 instead of 2e-3): measured on the ground-truth benchmark (``bench/fit_groundtruth.py``).
* Vertex sets (UV-valid, eye region, silhouette region) are derived from the template geometry
  (:mod:`.regions`) instead of the reference's asset files.
* One pinhole camera for losses and rasterization (principal point at the exact image centre for pp = 0).
* A Levenberg-Marquardt stage (``StageSpec.method = "lm"``, :mod:`.refine`) after the image stage in the
  ``balanced`` and ``best`` presets: the same terms and weights, solved to convergence where Adam stalls on the
  hundreds of small identity components. On the ground-truth benchmark it took the posed error from 1.04 to
  0.79 mm (20 heads with the synthetic head's earlier asymmetric identity, 6 iterations in place of 250 Adam
  steps). ``FitConfig.preset(refine_prior_scale=...)``
  weighs its identity, expression and symmetry priors apart from the image stage's (presets: 1, the same; see
  :data:`.config.REFINE_PRIOR_SCALE` for what lower values gain on perfect maps and lose on imperfect ones).
* The head's size (``size_marginal``, in the presets' Levenberg-Marquardt stage, :data:`.config.SIZE_MARGINAL`):
  a larger head further away gives the same image, so the reference's joint maximum lets the priors pick the
  size, and they pick a small head (the coefficients grow with it). The term ``-kappa log(distance)`` adds the
  volume the image-determined coefficients span at each size (kappa: twice the value of the identity, expression
  and symmetry priors at the stage's start, :meth:`.objective.Objective.set_size_kappa`); 0 restores the
  reference's objective.
* Dense UV term: pixels whose UV error reaches 0.1 are left out (``FitConfig.dense_uv_max``; None keeps them, as
  the reference). They show another part of the UV layout (an eyeball through the lid, the far side of a seam) and
  otherwise make up almost all of the term.
* Camera stage: the correspondence acceptance radius widens to the median current distance when that exceeds
  ``dist_uv`` (``FitConfig.camera_accept_quantile``; None keeps the reference's fixed radius, under which a start
  30 degrees off accepts no correspondence and the camera stage does not move the head).
* Head pose coordinates: the presets optimise the pose of the neck joint's frame (``FitConfig.pose_frame =
  "neck"``), so that the face stays put when the neck turns; the reference optimises FLAME's root
  (``"root"``), where Adam and Levenberg-Marquardt left the neck near zero and turned the whole head instead. The
  objective is the same (see :data:`.config.POSE_FRAME` for the measurement).
* Back faces are not drawn (``FitConfig.cull_back = True``; ``False`` draws both sides as the reference does).
* Masks: FaceCrop has no neck or ear classes (see :mod:`.targets`).
"""

from .config import FitConfig, StageSpec
from .fitter import FitProgress, fit
from .init import PoseInit
from .maps import render_maps
from .result import FitResult

__all__ = ["fit", "FitConfig", "StageSpec", "FitProgress", "FitResult", "PoseInit", "render_maps"]
