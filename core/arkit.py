"""ARKit-named expression keys for any FLAME-topology head: 51 definitions as data, one rule that builds them.

The names are Apple's ``ARFaceAnchor.BlendShapeLocation`` list less ``tongueOut`` (FLAME has no tongue), in the
order of the Live Link Face CSV columns (:data:`ARKIT_NAMES`). "Left" and "Right" are the subject's own sides;
FLAME's +x is the subject's left, +y up, +z forward.

Named points
------------
Keys are stated as motions of named facial points on the neutral head:

- MediaPipe face-mesh ids (0..467), evaluated through a MediaPipe landmark embedding (barycentric points on FLAME
  triangles). Every id used here belongs to the 105 ids of FLAME's own MediaPipe embedding (brows, eye contours,
  nose, lips), so any MediaPipe embedding on FLAME topology works. The subject's left eye is MediaPipe's
  ``LEFT_EYE`` (outer corner 263, inner 362, upper lid 386, lower lid 374); 291 is the subject-left lip corner.
- Derived points, for places those 105 ids do not cover: ``chin`` (the skin vertex nearest to 0.55 eye distances
  below the lower lip's centre 17), ``cheek_left``/``cheek_right`` (the skin vertex nearest to the midpoint of
  the outer eye corner and the lip corner of that side), ``pupil_left``/``pupil_right`` (the front-most vertex of
  that eyeball). Skin vertices are those skinned less than half to the eye joints.

Motions are in millimetres for a face whose eye joints are :data:`REFERENCE_EYE_DISTANCE` (63 mm) apart and scale
with the head's own eye-joint distance, so the keys fit any head size.

The rule
--------
Each key is one of

- a joint rotation (jawOpen, jawLeft/Right: the jaw; eyeLook*: the eye of that side). Its vertex offsets are the
  FLAME head posed by that rotation (skinning and pose correctives) minus the neutral head: a shape key cannot
  rotate, so the rotation is baked into the offsets. A rigged head may drive the bone instead
  (:attr:`ArkitKey.jaw_pose`, :attr:`ArkitKey.eye_poses` carry the rotation);
- an expression key: coefficients ``x`` of FLAME's expression blendshapes (plus the two eyelid blendshapes for
  the eye keys, when the model has them) found in closed form as the minimiser of

      sum over targets |L_p x - d_p|^2                       target motions d_p of the key's named points
    + w_still * sum over still vertices |A_v x|^2            vertices beyond the key's reach stay where they are
    + w_mirror * |mirror(A x_left) - A x_right|^2 / V        (left/right pairs, solved together; a centre key
                                                              against its own mirror image)
    + w_coeff * |x|^2                                        coefficients stay small

  (all motions in reference millimetres; ``A`` the blendshapes, ``L_p`` their value at point p). A key's reach
  is every vertex within :data:`REACH` eye distances of one of its points; vertices further than
  ``REACH + BAND`` are the still ones. A target is either a motion vector, a fraction of the way towards another
  named point (a blink closes the upper lid onto the lower one), or minus a fraction of another key's motion of
  that point (mouthClose brings the lower lip back up against jawOpen).

Right keys are the left keys mirrored: points through MediaPipe's mirror ids, motions with x negated, rotations
as axial vectors (x kept, y and z negated); mirroring uses the vertex mirror index of the UV template. Centre keys
are stated for the subject's left and the midline; their right half is the mirror image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import AssetInvalidError
from .flame import FlameData, FlameModel, FlameParams, LandmarkEmbedding
from .flame.data import JAW, LEFT_EYE, RIGHT_EYE

log = logging.getLogger(__name__)

#: The 51 key names: Apple's ARKit blendshapes less tongueOut, in the Live Link Face column order.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
)

#: Eye-joint distance (metres) at which the motions below are stated in millimetres.
REFERENCE_EYE_DISTANCE = 0.063
#: A key's reach and the band beyond it where nothing is asked (both in eye distances, about 32 and 16 mm).
REACH, BAND = 0.5, 0.25
#: Weights of the rule (per still vertex, per vertex of the mirror term, per squared coefficient).
W_STILL, W_MIRROR, W_COEFF = 0.1, 200.0, 0.03
#: Eye rotation of an eye-look key at weight 1 (radians): the eye angles the Live Link Face app writes per unit of
#: the eyeLook coefficients (0.59-0.61 rad horizontally, 0.47-0.56 vertically in four public takes).
EYE_LOOK_SIDEWAYS, EYE_LOOK_VERTICAL = 0.60, 0.50
#: Jaw rotation of jawOpen (about +x, opening) and jawLeft (about +y, chin to the subject's left), radians.
JAW_OPEN, JAW_SIDEWAYS = 0.35, 0.10
#: Eye joints' share of a vertex's skinning above which it belongs to an eyeball, not the skin.
_EYEBALL_WEIGHT = 0.5
#: Skinning weight on the rotated joint above which a vertex is in a rotation key's reach.
_JOINT_REACH_WEIGHT = 0.01

# MediaPipe's face mesh numbers the midline first among ids 0..247, then the subject's right side; ids 248..467 are
# the subject's left side, each the mirror of the k-th right-side id in increasing order.
_MP_MIDLINE = frozenset(
    (0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 94, 151, 152, 164, 168, 175, 195, 197, 199, 200)
)
_MP_RIGHT = tuple(i for i in range(248) if i not in _MP_MIDLINE)
_MP_MIRROR = {**{i: i for i in _MP_MIDLINE}, **{r: 248 + k for k, r in enumerate(_MP_RIGHT)},
              **{248 + k: r for k, r in enumerate(_MP_RIGHT)}}
_DERIVED_MIRROR = {"chin": "chin", "cheek_left": "cheek_right", "cheek_right": "cheek_left",
                   "pupil_left": "pupil_right", "pupil_right": "pupil_left"}

Point = int | str  # MediaPipe id or derived point name


def mirror_point(point: Point) -> Point:
    """The named point on the other side of the face (itself on the midline)."""
    return _DERIVED_MIRROR[point] if isinstance(point, str) else _MP_MIRROR[point]


def _mirror_vec(v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    return None if v is None else (-v[0], v[1], v[2])


def _mirror_axial(v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    return None if v is None else (v[0], -v[1], -v[2])


def _mirror_name(name: str) -> str:
    if name.endswith("Left"):
        return name[:-4] + "Right"
    if name.endswith("Right"):
        return name[:-5] + "Left"
    return name


@dataclass(frozen=True)
class Target:
    """One named point's wanted motion in a key.

    Exactly one of: ``motion`` (mm at the reference size, FLAME axes), ``toward`` (move ``fraction`` of the way to
    that point) or ``undo`` (minus ``fraction`` times that key's motion of the point).
    """

    point: Point
    motion: tuple[float, float, float] | None = None
    toward: Point | None = None
    undo: str | None = None
    fraction: float = 1.0

    def mirrored(self) -> Target:
        return replace(
            self, point=mirror_point(self.point), motion=_mirror_vec(self.motion),
            toward=None if self.toward is None else mirror_point(self.toward),
            undo=None if self.undo is None else _mirror_name(self.undo),
        )


@dataclass(frozen=True)
class KeySpec:
    """One key's definition.

    Attributes
    ----------
    name : ARKit name.
    targets : expression keys: the named points' wanted motions (the first is the key's probe).
    eyelids : the solve may use the eyelid blendshapes.
    jaw : rotation keys: jaw axis-angle (radians).
    eye : rotation keys: axis-angle of the key's own eye (the left eye for left keys).
    probe, direction : rotation keys: the point whose motion shows the key and the named direction it moves in.
    """

    name: str
    targets: tuple[Target, ...] = ()
    eyelids: bool = False
    jaw: tuple[float, float, float] | None = None
    eye: tuple[float, float, float] | None = None
    probe: Point | None = None
    direction: tuple[float, float, float] | None = None

    def mirrored(self) -> KeySpec:
        return replace(
            self, name=_mirror_name(self.name), targets=tuple(t.mirrored() for t in self.targets),
            jaw=_mirror_axial(self.jaw), eye=_mirror_axial(self.eye),
            probe=None if self.probe is None else mirror_point(self.probe), direction=_mirror_vec(self.direction),
        )


def _t(point: Point, x: float, y: float, z: float) -> Target:
    return Target(point, motion=(x, y, z))


# Left and centre keys (centre keys: subject-left and midline points; the right half is added by mirroring).
_LEFT_SPECS = (
    KeySpec("eyeBlinkLeft", (Target(386, toward=374, fraction=0.85), Target(385, toward=380, fraction=0.85),
                             Target(387, toward=373, fraction=0.85), Target(374, toward=386, fraction=0.1)),
            eyelids=True),
    KeySpec("eyeSquintLeft", (_t(374, 0, 2, 0.5), _t(373, 0, 1.5, 0.5), _t(380, 0, 1.5, 0.5), _t(386, 0, -1, 0)),
            eyelids=True),
    KeySpec("eyeWideLeft", (_t(386, 0, 2.5, 0), _t(385, 0, 2, 0), _t(387, 0, 2, 0), _t(374, 0, -0.5, 0)),
            eyelids=True),
    KeySpec("eyeLookDownLeft", eye=(EYE_LOOK_VERTICAL, 0, 0), probe="pupil_left", direction=(0, -1, 0)),
    KeySpec("eyeLookInLeft", eye=(0, -EYE_LOOK_SIDEWAYS, 0), probe="pupil_left", direction=(-1, 0, 0)),
    KeySpec("eyeLookOutLeft", eye=(0, EYE_LOOK_SIDEWAYS, 0), probe="pupil_left", direction=(1, 0, 0)),
    KeySpec("eyeLookUpLeft", eye=(-EYE_LOOK_VERTICAL, 0, 0), probe="pupil_left", direction=(0, 1, 0)),
    KeySpec("jawLeft", jaw=(0, JAW_SIDEWAYS, 0), probe="chin", direction=(1, 0, 0)),
    KeySpec("mouthLeft", (_t(0, 5, 0, 0), _t(17, 5, 0, 0), _t(13, 5, 0, 0), _t(14, 5, 0, 0), _t(291, 4, 0, -1),
                          _t(61, 5, 0, 0.5), _t(267, 5, 0, 0), _t(37, 5, 0, 0), _t(314, 5, 0, 0), _t(84, 5, 0, 0))),
    KeySpec("mouthSmileLeft", (_t(291, 2.5, 4.5, -2), _t(409, 1.5, 2.5, -1), _t(375, 1.5, 2.5, -1),
                               _t("cheek_left", 0.5, 2, 0.5))),
    KeySpec("mouthFrownLeft", (_t(291, 0.5, -4, 0), _t(409, 0, -2, 0), _t(375, 0, -2.5, 0))),
    KeySpec("mouthDimpleLeft", (_t(291, 2, 0, -3), _t(409, 1, 0, -1.5), _t(375, 1, 0, -1.5))),
    KeySpec("mouthStretchLeft", (_t(291, 4, -2, -1), _t(375, 2, -2.5, -0.5), _t(321, 1, -2, 0),
                                 _t(405, 0.5, -1.5, 0))),
    KeySpec("mouthPressLeft", (_t(267, 0, -1.5, 0), _t(269, 0, -1.5, 0), _t(314, 0, 1.5, 0), _t(405, 0, 1.5, 0))),
    KeySpec("mouthLowerDownLeft", (_t(314, 0, -3, 0), _t(405, 0, -3, 0), _t(321, 0, -2.5, 0), _t(17, 0, -1.5, 0),
                                   _t(317, 0, -2.5, 0), _t(402, 0, -2.5, 0))),
    KeySpec("mouthUpperUpLeft", (_t(267, 0, 3, 0.5), _t(269, 0, 3, 0.5), _t(270, 0, 2.5, 0), _t(0, 0, 1.5, 0),
                                 _t(312, 0, 2.5, 0), _t(311, 0, 2.5, 0))),
    KeySpec("browDownLeft", (_t(336, -1.5, -4, 0), _t(285, -1.5, -4, 0), _t(296, -1, -4, 0), _t(295, -1, -4, 0),
                             _t(334, -0.5, -3, 0), _t(282, -0.5, -3, 0), _t(293, 0, -2, 0), _t(283, 0, -2, 0),
                             _t(300, 0, -1.5, 0), _t(276, 0, -1.5, 0))),
    KeySpec("browOuterUpLeft", (_t(300, 0, 5, 0), _t(276, 0, 5, 0), _t(293, 0, 4, 0), _t(283, 0, 4, 0),
                                _t(334, 0, 2, 0), _t(336, 0, 0.5, 0))),
    KeySpec("cheekSquintLeft", (_t("cheek_left", 0, 3, 1), _t(374, 0, 1, 0))),
    KeySpec("noseSneerLeft", (_t(358, 0.5, 3, 0), _t(327, 0, 2.5, 0), _t(326, 0, 2, 0), _t(267, 0, 1, 0))),
)
_CENTRE_SPECS = (
    KeySpec("jawOpen", jaw=(JAW_OPEN, 0, 0), probe="chin", direction=(0, -1, 0)),
    KeySpec("jawForward", (_t("chin", 0, 0, 4), _t(17, 0, 0, 3), _t(14, 0, 0, 3), _t(314, 0, 0, 3))),
    KeySpec("mouthClose", tuple(Target(p, undo="jawOpen") for p in (14, 17, 317, 314, 402, 405))
            + (_t(13, 0, -0.5, 0),)),
    KeySpec("mouthFunnel", (_t(0, 0, 1.5, 4), _t(17, 0, -1.5, 4), _t(13, 0, 1, 3), _t(14, 0, -1, 3),
                            _t(291, -3, 0, 2))),
    KeySpec("mouthPucker", (_t(291, -5, 0, 2), _t(0, 0, 0, 4), _t(17, 0, 0, 4), _t(13, 0, 0, 3), _t(14, 0, 0, 3),
                            _t(267, -1.5, 0, 3), _t(314, -1.5, 0, 3))),
    KeySpec("mouthRollLower", (_t(17, 0, 2, -3), _t(14, 0, 0.5, -2), _t(314, 0, 1.5, -2.5), _t(405, 0, 1, -2),
                               _t(317, 0, 0.5, -1.5))),
    KeySpec("mouthRollUpper", (_t(0, 0, -2, -3), _t(13, 0, -0.5, -2), _t(267, 0, -1.5, -2.5), _t(269, 0, -1, -2),
                               _t(312, 0, -0.5, -1.5))),
    KeySpec("mouthShrugLower", (_t(17, 0, 3, 1), _t(14, 0, 2, 0.5), _t(314, 0, 2.5, 1), _t("chin", 0, 2, 1.5))),
    KeySpec("mouthShrugUpper", (_t(0, 0, 2, 1), _t(13, 0, 1.5, 0.5), _t(267, 0, 2, 1))),
    KeySpec("browInnerUp", (_t(336, 0, 5, 0), _t(285, 0, 5, 0), _t(296, 0, 3.5, 0), _t(295, 0, 3.5, 0),
                            _t(334, 0, 1.5, 0), _t(300, 0, 0.5, 0))),
    KeySpec("cheekPuff", (_t("cheek_left", 4, 0, 2), _t(291, 1, 0, 0.5))),
)


def _with_mirror_half(spec: KeySpec) -> KeySpec:
    extra = tuple(t.mirrored() for t in spec.targets if mirror_point(t.point) != t.point)
    return replace(spec, targets=spec.targets + extra)


def key_specs() -> dict[str, KeySpec]:
    """Every key's definition by name, in :data:`ARKIT_NAMES` order (right keys generated by mirroring)."""
    specs = {s.name: s for s in _LEFT_SPECS}
    specs.update({s.mirrored().name: s.mirrored() for s in _LEFT_SPECS})
    specs.update({s.name: _with_mirror_half(s) for s in _CENTRE_SPECS})
    return {name: specs[name] for name in ARKIT_NAMES}


@dataclass(frozen=True)
class ArkitKey:
    """One ARKit key built on a head.

    Attributes
    ----------
    name : ARKit name.
    expression : (Ne,) FLAME expression coefficients (zero for rotation keys).
    eyelids : (2,) left and right eyelid coefficients (zero without eyelid blendshapes).
    jaw_pose : (3,) jaw axis-angle, radians (zero unless a jaw rotation key).
    eye_poses : (2, 3) left and right eye axis-angle, radians (zero unless an eye-look key).
    offsets : (V, 3) float32 vertex offsets on the neutral head at weight 1, metres; rotation keys have the
        rotation baked in (skinning and pose correctives).
    reach : (V,) bool vertices the key is meant to move.
    still : (V,) bool vertices the key should leave still (further than BAND beyond its reach).
    probe : the point that shows the key (MediaPipe id or derived point name).
    probe_motion : (3,) the probe's motion at weight 1, metres.
    direction : (3,) unit vector, the named direction the probe moves in.
    goal : the probe motion the definition asks for, metres (expression keys), or None (rotation keys).
    """

    name: str
    expression: np.ndarray
    eyelids: np.ndarray
    jaw_pose: np.ndarray
    eye_poses: np.ndarray
    offsets: np.ndarray
    reach: np.ndarray
    still: np.ndarray
    probe: Point
    probe_motion: np.ndarray
    direction: np.ndarray
    goal: float | None


_ARRAYS = ("v_template", "shapedirs", "exprdirs", "eyelids", "J_regressor")


class _Head:
    """The neutral head's geometry and blendshape basis in the units of the rule (reference millimetres)."""

    def __init__(self, flame: FlameModel | FlameData, shape: np.ndarray, embedding: LandmarkEmbedding) -> None:
        # numpy only: BLAS calls right after torch's (whose worker threads keep spinning a while) run several times
        # slower on few cores, so the head is formed here without torch and the posed keys come last.
        if isinstance(flame, FlameData):
            arrays = {name: getattr(flame, name) for name in _ARRAYS}
            arrays["weights"], arrays["faces"] = flame.weights, flame.faces
        else:
            array = lambda t: None if t is None else t.detach().cpu().double().numpy()  # noqa: E731
            arrays = {name: array(getattr(flame, name)) for name in _ARRAYS}
            arrays["weights"], arrays["faces"] = array(flame.lbs_weights), flame.faces.cpu().numpy()
        self.flame = flame
        if len(shape) > arrays["shapedirs"].shape[2]:
            raise ValueError(f"shape has {len(shape)} coefficients; the model takes {arrays['shapedirs'].shape[2]}.")
        self.shape = shape
        self.vertices = arrays["v_template"] + arrays["shapedirs"][..., : len(shape)] @ shape
        joints = arrays["J_regressor"] @ self.vertices
        self.eye_distance = float(np.linalg.norm(joints[LEFT_EYE] - joints[RIGHT_EYE]))
        self.mm = 1e-3 * self.eye_distance / REFERENCE_EYE_DISTANCE  # metres per reference millimetre
        self.faces = arrays["faces"]
        self.weights = arrays["weights"]
        self.n_expr = arrays["exprdirs"].shape[2]
        self.has_eyelids = arrays["eyelids"] is not None
        basis = [arrays["exprdirs"]] + ([arrays["eyelids"].transpose(1, 2, 0)] if self.has_eyelids else [])
        self.basis = np.concatenate(basis, axis=2) / self.mm  # (V, 3, n) reference mm per coefficient
        self.squared_norms = (self.vertices**2).sum(1)
        self.skin = self.weights[:, [LEFT_EYE, RIGHT_EYE]].sum(1) < _EYEBALL_WEIGHT
        self.embedding = embedding
        self._landmarks = self._index_embedding(embedding)
        self._points: dict[Point, tuple[np.ndarray, np.ndarray]] = {}
        self._distances: dict[Point, np.ndarray] = {}

    @staticmethod
    def _index_embedding(embedding: LandmarkEmbedding) -> dict[int, int]:
        if embedding.kind != "mediapipe" or embedding.landmark_indices is None:
            raise AssetInvalidError(
                f"The landmark embedding {embedding.source} is not a MediaPipe embedding; choose a MediaPipe "
                "landmark embedding (such as FLAME's mediapipe_landmark_embedding.npz) for the ARKit keys."
            )
        return {int(mp): row for row, mp in enumerate(embedding.landmark_indices)}

    def require(self, points: set[Point]) -> None:
        """Raise AssetInvalidError naming the MediaPipe ids the embedding lacks."""
        missing = sorted(p for p in points if isinstance(p, int) and p not in self._landmarks)
        if missing:
            raise AssetInvalidError(
                f"The landmark embedding {self.embedding.source} lacks MediaPipe ids {missing} that the ARKit keys "
                "use; choose a MediaPipe embedding with the brow, eye, nose and lip ids."
            )

    def point(self, point: Point) -> tuple[np.ndarray, np.ndarray]:
        """(vertex ids (k,), weights (k,)) of a named point on the mesh."""
        if point not in self._points:
            self._points[point] = self._resolve(point)
        return self._points[point]

    def position(self, point: Point) -> np.ndarray:
        ids, w = self.point(point)
        return w @ self.vertices[ids]

    def _nearest_skin(self, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.where(self.skin, np.linalg.norm(self.vertices - position, axis=1), np.inf)
        return np.array([int(np.argmin(d))]), np.ones(1)

    def _resolve(self, point: Point) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(point, int):
            row = self._landmarks[point]
            return self.faces[self.embedding.face_idx[row]], np.asarray(self.embedding.bary[row], dtype=np.float64)
        if point == "chin":
            return self._nearest_skin(self.position(17) - np.array([0.0, 0.55 * self.eye_distance, 0.0]))
        if point in ("cheek_left", "cheek_right"):
            eye, lip = (263, 291) if point == "cheek_left" else (33, 61)
            return self._nearest_skin(0.5 * (self.position(eye) + self.position(lip)))
        if point in ("pupil_left", "pupil_right"):
            joint = LEFT_EYE if point == "pupil_left" else RIGHT_EYE
            eyeball = np.flatnonzero(self.weights[:, joint] >= _EYEBALL_WEIGHT)
            return np.array([eyeball[np.argmax(self.vertices[eyeball, 2])]]), np.ones(1)
        raise KeyError(point)

    def rows(self, point: Point) -> np.ndarray:
        """(3, n) basis at a named point."""
        ids, w = self.point(point)
        return np.einsum("k,kcn->cn", w, self.basis[ids])

    def distance(self, points: list[Point]) -> np.ndarray:
        """(V,) distance (metres) from each vertex to the nearest of the named points."""
        for p in points:
            if p not in self._distances:
                self._distances[p] = np.linalg.norm(self.vertices - self.position(p), axis=1)
        return np.min([self._distances[p] for p in points], axis=0)

    def within(self, centres: np.ndarray, radius: float) -> np.ndarray:
        """(V,) bool: vertices within ``radius`` (metres) of any of the (P, 3) centres."""
        near = np.zeros(len(self.vertices), dtype=bool)
        for start in range(0, len(centres), 256):
            c = centres[start : start + 256]
            d2 = self.squared_norms[:, None] - 2 * self.vertices @ c.T + (c**2).sum(1)[None]
            near |= (d2 <= radius * radius).any(1)
        return near


def _rotation_keys(head: _Head, specs: list[KeySpec]) -> dict[str, ArkitKey]:
    """Pose the head once per rotation key (one batched FLAME forward) and bake the motion into offsets."""
    n = len(specs)
    jaw = np.zeros((n, 3))
    eyes = np.zeros((n, 2, 3))
    joints = []
    for i, s in enumerate(specs):
        if s.jaw is not None:
            jaw[i] = s.jaw
            joints.append(JAW)
        else:
            side = 0 if s.name.endswith("Left") else 1
            eyes[i, side] = s.eye
            joints.append((LEFT_EYE, RIGHT_EYE)[side])
    masks = {}  # per joint: the vertices it moves, and those further than BAND from all of them (before torch runs)
    for joint in set(joints):
        reach = head.weights[:, joint] > _JOINT_REACH_WEIGHT
        masks[joint] = reach, ~head.within(head.vertices[reach], BAND * head.eye_distance)
    flame = head.flame
    model = FlameModel(flame, n_shape=len(head.shape), dtype=torch.float64) if isinstance(flame, FlameData) else flame
    ref = model.v_template
    as_tensor = lambda a: torch.as_tensor(a, dtype=ref.dtype, device=ref.device)  # noqa: E731
    with torch.no_grad():
        posed = model(FlameParams(shape=as_tensor(head.shape)[None], jaw_pose=as_tensor(jaw),
                                  eye_pose_left=as_tensor(eyes[:, 0]), eye_pose_right=as_tensor(eyes[:, 1]))).vertices
    offsets = posed.cpu().double().numpy() - head.vertices[None]
    keys = {}
    for i, (s, joint) in enumerate(zip(specs, joints)):
        ids, w = head.point(s.probe)
        keys[s.name] = ArkitKey(
            name=s.name, expression=np.zeros(head.n_expr), eyelids=np.zeros(2), jaw_pose=jaw[i], eye_poses=eyes[i],
            offsets=offsets[i].astype(np.float32), reach=masks[joint][0], still=masks[joint][1], probe=s.probe,
            probe_motion=w @ offsets[i, ids], direction=np.asarray(s.direction, dtype=np.float64), goal=None,
        )
    return keys


class _Problem:
    """The quadratic of one expression key over its first ``n`` basis columns: H x = g, and what the key reports."""

    def __init__(self, head: _Head, spec: KeySpec, gram: np.ndarray, solved: dict[str, ArkitKey]) -> None:
        self.spec = spec
        n = self.n = head.basis.shape[2] if spec.eyelids else head.n_expr  # eyelid columns come last
        h = np.zeros((n, n))
        g = np.zeros(n)
        self.goals = []
        for t in spec.targets:
            rows = head.rows(t.point)[:, :n]
            if t.motion is not None:
                d = np.asarray(t.motion, dtype=np.float64)
            elif t.toward is not None:
                d = t.fraction * (head.position(t.toward) - head.position(t.point)) / head.mm
            else:
                ids, w = head.point(t.point)
                d = -t.fraction * (w @ solved[t.undo].offsets[ids].astype(np.float64)) / head.mm
            self.goals.append(d)
            h += rows.T @ rows
            g += rows.T @ d
        distance = head.distance([t.point for t in spec.targets])
        self.reach = distance <= REACH * head.eye_distance
        self.still = distance > (REACH + BAND) * head.eye_distance
        moving = head.basis[~self.still, :, :n].reshape(-1, n)
        h += W_STILL * (gram[:n, :n] - moving.T @ moving)
        h += W_COEFF * np.eye(n)
        self.h, self.g = h, g


def _mirror_grams(head: _Head, mirror_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grams over all vertices: G = A'A, Gm = (SA)'(SA), C = A'(SA); S mirrors a vertex field (x negated, vertex v
    taking the value of its mirror vertex)."""
    n = head.basis.shape[2]
    flat = head.basis.reshape(-1, n)
    mirrored = (head.basis[mirror_index] * np.array([-1.0, 1.0, 1.0])[None, :, None]).reshape(-1, n)
    return flat.T @ flat, mirrored.T @ mirrored, flat.T @ mirrored


def _expression_key(head: _Head, problem: _Problem, full: np.ndarray, offsets: np.ndarray) -> ArkitKey:
    """The key of one solved problem: ``full`` (n,) coefficients over all basis columns, ``offsets`` (V, 3) metres."""
    spec = problem.spec
    probe = spec.targets[0].point
    ids, w = head.point(probe)
    goal = problem.goals[0] * head.mm
    eyelids = full[head.n_expr :] if head.has_eyelids else np.zeros(2)
    return ArkitKey(
        name=spec.name, expression=full[: head.n_expr].copy(), eyelids=np.asarray(eyelids, dtype=np.float64),
        jaw_pose=np.zeros(3), eye_poses=np.zeros((2, 3)), offsets=offsets.astype(np.float32), reach=problem.reach,
        still=problem.still, probe=probe, probe_motion=w @ offsets[ids], direction=goal / np.linalg.norm(goal),
        goal=float(np.linalg.norm(goal)),
    )


def _expression_keys(
    head: _Head, specs: list[KeySpec], solved: dict[str, ArkitKey],
    grams: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, ArkitKey]:
    """Solve expression keys (each centre key alone, each left key with its right partner, which must be in
    ``specs`` too); ``solved`` holds the keys their targets may refer to."""
    gram, gram_m, cross = grams
    w_mirror = W_MIRROR / head.basis.shape[0]
    by_name = {s.name: s for s in specs}
    # Each unit is a centre key or a left/right pair: its problems and the normal equations of its unknowns.
    units: list[tuple[list[_Problem], np.ndarray, np.ndarray]] = []
    for spec in specs:
        partner = _mirror_name(spec.name)
        if spec.name.endswith("Right"):
            continue
        if partner == spec.name:
            p = _Problem(head, spec, gram, solved)
            c = np.s_[: p.n, : p.n]
            units.append(([p], p.h + w_mirror * (gram[c] + gram_m[c] - cross[c] - cross[c].T), p.g))
            continue
        pl, pr = _Problem(head, spec, gram, solved), _Problem(head, by_name[partner], gram, solved)
        c = np.s_[: pl.n, : pl.n]
        # |S A xl - A xr|^2 = xl' Gm xl - 2 xr' C xl + xr' G xr, with C = A' S A.
        system = np.block([[pl.h + w_mirror * gram_m[c], -w_mirror * cross[c].T],
                           [-w_mirror * cross[c], pr.h + w_mirror * gram[c]]])
        units.append(([pl, pr], system, np.concatenate((pl.g, pr.g))))
    by_size: dict[int, list[int]] = {}
    for i, (_, system, _) in enumerate(units):
        by_size.setdefault(len(system), []).append(i)
    problems, coefficients = [], []
    for batch in by_size.values():  # one LAPACK call per system size
        xs = np.linalg.solve(np.stack([units[i][1] for i in batch]), np.stack([units[i][2] for i in batch])[..., None])
        for i, x in zip(batch, xs[..., 0]):
            for j, p in enumerate(units[i][0]):
                full = np.zeros(head.basis.shape[2])
                full[: p.n] = x[j * p.n : (j + 1) * p.n]
                problems.append(p)
                coefficients.append(full)
    x = np.stack(coefficients, axis=1)  # (n, K): every key's offsets in one product
    offsets = (head.basis.reshape(-1, len(x)) @ x).reshape(len(head.vertices), 3, -1) * head.mm
    return {p.spec.name: _expression_key(head, p, x[:, k], offsets[:, :, k]) for k, p in enumerate(problems)}


def arkit_keys(
    flame: FlameModel | FlameData,
    embedding: LandmarkEmbedding,
    mirror_index: np.ndarray,
    shape: np.ndarray | None = None,
) -> list[ArkitKey]:
    """Build the 51 ARKit keys on one head by the rule in the module docstring.

    Parameters
    ----------
    flame : the FLAME model (any release or the synthetic head), as numpy arrays or the torch layer.
    embedding : MediaPipe landmark embedding on FLAME topology (kind "mediapipe"), with the ids the keys use.
    mirror_index : (V,) vertex mirror index (:attr:`core.flame.UVTemplate.mirror_index`).
    shape : (<= Ns,) identity coefficients of the head (None: the template head).

    Returns
    -------
    list of :class:`ArkitKey` in :data:`ARKIT_NAMES` order.

    Raises
    ------
    AssetInvalidError : the embedding is not a MediaPipe one or lacks ids the keys use.
    """
    shape = np.zeros(0) if shape is None else np.asarray(shape, dtype=np.float64).reshape(-1)
    head = _Head(flame, shape, embedding)
    mirror_index = np.asarray(mirror_index, dtype=np.int64)
    if mirror_index.shape != (len(head.vertices),):
        raise ValueError(f"mirror_index must have shape ({len(head.vertices)},), got {mirror_index.shape}.")
    specs = key_specs()
    used = {t.point for s in specs.values() for t in s.targets} | {t.toward for s in specs.values() for t in
                                                                    s.targets if t.toward is not None}
    head.require(used | {17, 263, 291, 33, 61})
    grams = _mirror_grams(head, mirror_index)
    # Keys defined against another key's motion (mouthClose against jawOpen) wait for the posed keys.
    later = {s.name for s in specs.values() if any(t.undo for t in s.targets)}
    later |= {_mirror_name(name) for name in later}
    keys = _expression_keys(head, [s for s in specs.values() if s.targets and s.name not in later], {}, grams)
    keys.update(_rotation_keys(head, [s for s in specs.values() if not s.targets]))
    keys.update(_expression_keys(head, [s for s in specs.values() if s.name in later], keys, grams))
    log.info("Built %d ARKit keys on %s (eye distance %.1f mm)", len(keys), flame.release, 1e3 * head.eye_distance)
    return [keys[name] for name in ARKIT_NAMES]
