"""Vertex sets the fitter needs, derived from the FLAME template geometry (no extra asset files).

Pixel3DMM loads a 2473-vertex "UV-valid" set (``uv_valid_verty_noEyes_noEyeRegion_debug_wEars.npy``: the face
and ears without eyeballs and eye region) from an asset this project does not have. It is rebuilt here from the
template, scaled by the distance between the two eye joints ``d`` (about 6 cm on FLAME) so that the same rules
work for the real FLAME template and the synthetic FLAME-format head:

* eyeballs: every vertex outside the largest connected component of the mesh (FLAME's two eyeball shells);
* eye region: head vertices within ``0.45 d`` of an eye joint (lids and the skin around them);
* face: head vertices in front of the plane ``z = z_eyes - 1.6 d`` (keeps the ears), between
  ``y_eyes - 2.1 d`` (chin, not the neck) and ``y_eyes + 1.25 d`` (forehead, not the scalp);
* UV-valid: face minus eye region;
* silhouette region (the reference's ``uv_mask_eyes`` texture): face with eye region and eyeballs, without the
  ears (vertices further than ``1.25 d`` from the mid-plane and behind ``z_eyes - 0.6 d``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FaceRegions", "derive_regions", "connected_components"]


@dataclass(frozen=True)
class FaceRegions:
    """(V,) boolean vertex masks.

    Attributes
    ----------
    uv_valid : vertices used by the UV correspondence loss and the PnP initialisation
    eye_region : vertices whose rendered mask damps the normal loss (eye region and eyeballs)
    silhouette : vertices rendered into the silhouette image
    eyeballs : vertices outside the main head surface
    interocular : distance between the eye joints of the template (metres)
    """

    uv_valid: np.ndarray
    eye_region: np.ndarray
    silhouette: np.ndarray
    eyeballs: np.ndarray
    interocular: float


def connected_components(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Label (V,) int64 of the connected component of each vertex (union-find with path halving)."""
    parent = np.arange(n_vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # Vectorised min-label propagation until nothing changes (few sweeps on meshes with short diameters in
    # label space thanks to pointer jumping).
    while True:
        a = parent[edges[:, 0]]
        b = parent[edges[:, 1]]
        lo = np.minimum(a, b)
        new = parent.copy()
        np.minimum.at(new, edges[:, 0], lo)
        np.minimum.at(new, edges[:, 1], lo)
        np.minimum.at(new, a, lo)
        np.minimum.at(new, b, lo)
        new = new[new]
        if np.array_equal(new, parent):
            return parent
        parent = new


def derive_regions(v_template: np.ndarray, faces: np.ndarray, j_regressor: np.ndarray) -> FaceRegions:
    """Derive the fitter's vertex sets from a FLAME-topology template.

    Parameters
    ----------
    v_template : (V, 3) canonical template (metres, +y up, face towards +z)
    faces : (F, 3) triangles
    j_regressor : (J, V) joint regressor; joints 3 and 4 are the eyes

    Returns
    -------
    FaceRegions
    """
    v = np.asarray(v_template, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    joints = np.asarray(j_regressor, dtype=np.float64) @ v
    eyes = joints[3:5]
    d = float(np.linalg.norm(eyes[0] - eyes[1]))
    mid = eyes.mean(0)
    labels = connected_components(v.shape[0], faces)
    counts = np.bincount(labels, minlength=v.shape[0])
    eyeballs = labels != counts.argmax()
    head = ~eyeballs
    rel = v - mid
    near_eye = np.min(np.linalg.norm(v[:, None, :] - eyes[None], axis=-1), axis=1) < 0.45 * d
    eye_region = (head & near_eye) | eyeballs
    face = head & (rel[:, 2] > -1.6 * d) & (rel[:, 1] > -2.1 * d) & (rel[:, 1] < 1.25 * d)
    uv_valid = face & ~eye_region
    ears = (np.abs(rel[:, 0]) > 1.25 * d) & (rel[:, 2] < -0.6 * d)
    silhouette = (face & ~ears) | eye_region
    return FaceRegions(uv_valid, eye_region, silhouette, eyeballs, d)
