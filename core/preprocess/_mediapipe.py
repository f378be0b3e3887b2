"""Run mediapipe's bundled solutions so that a failure or a hang can never take the caller down.

mediapipe 0.10.21 ships face detection, the 478-point face mesh (with irises) and selfie segmentation inside
its wheel. After an internal graph error, creating another graph in the same process has been seen to hang
forever, so:

- every call builds a fresh graph and closes it;
- every call runs in a daemon thread and is abandoned after a timeout;
- after the first failure or timeout mediapipe is not used again in this process (callers fall back).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import Pixel3DMMError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_S = 30.0
"""Seconds one mediapipe call (import included) may take before it is abandoned."""

_state: dict[str, str | None] = {"disabled": None}


class MediapipeUnavailableError(Pixel3DMMError):
    """mediapipe is missing, lacks its bundled models, failed earlier in this process, or failed now."""


def disable(reason: str) -> None:
    """Stop using mediapipe in this process (after a failure), remembering why."""
    if _state["disabled"] is None:
        logger.warning("mediapipe disabled for this session: %s", reason)
    _state["disabled"] = reason


def _import() -> Any:
    import mediapipe as mp  # noqa: PLC0415 - slow, optional, absent on Python 3.13

    solutions = getattr(mp, "solutions", None)
    if solutions is None or not hasattr(solutions, "face_mesh"):
        raise MediapipeUnavailableError(
            f"mediapipe {getattr(mp, '__version__', '?')} has no bundled face models; install mediapipe 0.10.21 "
            "or use the OpenCV detector.")
    return solutions


def run(task: Callable[[Any], T], what: str) -> T:
    """Run ``task(mp.solutions)`` in a daemon thread, abandoning it after :data:`TIMEOUT_S` seconds.

    Parameters
    ----------
    task : Callable
        Builds its own graph(s) in a ``with`` block, processes, returns plain numpy data.
    what : str
        Short description for logs and messages.

    Returns
    -------
    The task's result.

    Raises
    ------
    MediapipeUnavailableError
        mediapipe cannot be imported, was disabled earlier, raised, or timed out (then it is disabled).
    """
    if _state["disabled"] is not None:
        raise MediapipeUnavailableError(f"mediapipe is disabled for this session ({_state['disabled']}); "
                                        "restart Blender to retry it.")
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = task(_import())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"mediapipe-{what}", daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        disable(f"{what} did not finish within {TIMEOUT_S:g} s")
        raise MediapipeUnavailableError(f"mediapipe {what} hung; it is disabled for this session.")
    error = result.get("error")
    if isinstance(error, ImportError):
        disable(f"cannot import mediapipe ({error})")
        raise MediapipeUnavailableError("mediapipe is not installed for this Python; the OpenCV detector is "
                                        "used instead.") from error
    if isinstance(error, MediapipeUnavailableError):
        disable(str(error))
        raise error
    if error is not None:
        disable(f"{what} raised {type(error).__name__}: {error}")
        raise MediapipeUnavailableError(f"mediapipe {what} failed ({error}); it is disabled for this "
                                        "session.") from error
    return result["value"]


def detect(images: Sequence[np.ndarray], model_selection: int,
           min_confidence: float = 0.5) -> list[list[tuple[np.ndarray, float, np.ndarray]]]:
    """Bundled face detection on several images with one graph (building a graph costs more than a small image).

    Parameters
    ----------
    images : Sequence[np.ndarray]
        Each (H, W, 3) uint8 RGB, C-contiguous; sizes may differ.
    model_selection : int
        0: short range (faces within about 2 m), 1: full range.
    min_confidence : float

    Returns
    -------
    list of list of (box, score, keypoints)
        Per image: box (4,) x0, y0, w, h and keypoints (6, 2) in pixels of that image (x right, y down,
        continuous).
    """

    def task(solutions: Any) -> list[list[tuple[np.ndarray, float, np.ndarray]]]:
        results = []
        with solutions.face_detection.FaceDetection(model_selection=model_selection,
                                                    min_detection_confidence=min_confidence) as graph:
            for rgb in images:
                h, w = rgb.shape[:2]
                out = []
                for det in graph.process(rgb).detections or []:
                    data = det.location_data
                    b = data.relative_bounding_box
                    box = np.array([b.xmin * w, b.ymin * h, b.width * w, b.height * h], dtype=np.float64)
                    kps = np.array([[k.x * w, k.y * h] for k in data.relative_keypoints], dtype=np.float64)
                    out.append((box, float(det.score[0]), kps.reshape(-1, 2)))
                results.append(out)
        return results

    return run(task, "face detection")


def face_mesh(rgb: np.ndarray) -> np.ndarray | None:
    """478-point face mesh with irises of the face nearest the image centre.

    Parameters
    ----------
    rgb : np.ndarray
        (H, W, 3) uint8 RGB, C-contiguous (a face crop: the wanted face is centred).

    Returns
    -------
    np.ndarray or None
        (478, 2) float64 pixel coordinates in ``rgb``, or None when no face mesh was found.
    """
    h, w = rgb.shape[:2]

    def task(solutions: Any) -> np.ndarray | None:
        with solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                                          min_detection_confidence=0.5) as graph:
            found = graph.process(rgb).multi_face_landmarks
        meshes = [np.array([[p.x * w, p.y * h] for p in face.landmark], dtype=np.float64) for face in found or []]
        if not meshes:
            return None
        return min(meshes, key=lambda m: float(np.linalg.norm(m.mean(axis=0) - (w / 2, h / 2))))

    return run(task, "face mesh")


def selfie_segmentation(rgb: np.ndarray) -> np.ndarray:
    """Person/background probability from the bundled selfie segmentation (general model).

    Parameters
    ----------
    rgb : np.ndarray
        (H, W, 3) uint8 RGB, C-contiguous.

    Returns
    -------
    np.ndarray
        (H, W) float32 in [0, 1], 1 = person.
    """

    def task(solutions: Any) -> np.ndarray:
        with solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as graph:
            mask = graph.process(rgb).segmentation_mask
        return np.asarray(mask, dtype=np.float32).copy()

    return run(task, "selfie segmentation")
