"""Issue 18's checks on real public-domain photos and hard versions of them (prints a table; not a test).

For scikit-image's astronaut and matplotlib's Grace Hopper, each as it is and made hard (dark glasses painted over
the eyes, the face turned by a strong perspective warp, heavy blur, the face half outside the frame), reconstruct
with the project's stand-in assets (synthetic FLAME-format head, published-size random networks: the networks'
output is noise, so the fit must lean on the landmarks) and report:

* the projected head's width over an independent face box (OpenCV's frontal Haar cascade on the original photo,
  carried through the same warp), goal 0.9-2.2; the distance of the face's centre from the box's centre in box
  widths, goal < 0.35; the jaw opening, goal < 0.7 rad;
* the mode the fit ended in, the verdict's landmark NME and silhouette IoU, and the verdict: a head outside those
  ranges must come with a "doubtful" verdict.

    python bench/hard_photos.py [--quality balanced] [--mode networks|landmarks|auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import skimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.assets import AssetRegistry  # noqa: E402
from core.errors import Pixel3DMMError  # noqa: E402
from core.fit.regions import derive_regions  # noqa: E402
from core.pipeline import PipelineSettings, reconstruct, write_standin_assets  # noqa: E402
from core.preprocess import _mediapipe  # noqa: E402

PHOTOS = {
    "astronaut": Path(skimage.__file__).parent / "data" / "astronaut.png",
    "grace_hopper": Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
}


def haar_box(rgb_u8: np.ndarray) -> np.ndarray:
    """The largest frontal Haar face box (x0, y0, w, h)."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    boxes = cascade.detectMultiScale(cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2GRAY), scaleFactor=1.1, minNeighbors=5)
    return np.asarray(max(boxes, key=lambda b: b[2] * b[3]), dtype=np.float64)


def variants(rgb: np.ndarray):
    """(name, image, 3x3 homography from the original's pixels to the variant's) for each hard version."""
    h, w = rgb.shape[:2]
    eye = np.eye(3)
    yield "original", rgb, eye
    marks = _mediapipe.face_mesh(rgb)
    glasses = rgb.copy()
    if marks is not None:
        for ring in ((33, 133, 159, 145), (362, 263, 386, 374)):
            pts = marks[list(ring)]
            centre, size = pts.mean(0), np.ptp(pts, axis=0)
            cv2.ellipse(glasses, (int(centre[0]), int(centre[1])), (int(size[0] * 0.9), int(max(size[1], size[0] * 0.35) * 1.6)),
                        0, 0, 360, (10, 10, 12), -1)
        cv2.line(glasses, tuple(int(v) for v in marks[133]), tuple(int(v) for v in marks[362]), (10, 10, 12), 3)
    yield "dark glasses", glasses, eye
    # A strong turn: the image plane rotated by 55 degrees about the vertical through the face (a perspective warp).
    box = haar_box(rgb)
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    f = 1.2 * w
    angle = np.radians(55.0)
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    r = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    warp = k @ r @ np.linalg.inv(k)
    yield "strong turn", cv2.warpPerspective(rgb, warp, (w, h), borderMode=cv2.BORDER_REPLICATE), warp
    yield "heavy blur", cv2.GaussianBlur(rgb, (0, 0), 8.0), eye
    shift = np.array([[1.0, 0, -cx], [0, 1, 0], [0, 0, 1]])  # the face's centre on the left edge
    yield "half outside", cv2.warpPerspective(rgb, shift, (w, h)), shift


def carried_box(box: np.ndarray, warp: np.ndarray) -> tuple[float, float, float]:
    """Centre x, y and width of a box after a homography (its corners' bounding box)."""
    x0, y0, bw, bh = box
    corners = np.array([[x0, y0, 1], [x0 + bw, y0, 1], [x0, y0 + bh, 1], [x0 + bw, y0 + bh, 1]], dtype=np.float64)
    moved = corners @ warp.T
    moved = moved[:, :2] / moved[:, 2:]
    return moved[:, 0].mean(), moved[:, 1].mean(), float(np.ptp(moved[:, 0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", default="balanced")
    ap.add_argument("--mode", default="networks", choices=("networks", "landmarks", "auto"))
    ap.add_argument("--standins", type=Path, default=Path(tempfile.gettempdir()) / "pixel3dmm-standins")
    args = ap.parse_args()
    registry = AssetRegistry(write_standin_assets(args.standins), use_environment=False)
    settings = PipelineSettings(quality=args.quality, mode=args.mode, texture_size=256)
    print(f"# stand-in assets in {args.standins}; {args.quality} preset, {args.mode} mode")
    print(f"{'photo':>13} {'variant':>13} {'width':>6} {'centre':>6} {'jaw':>5} {'sane':>5} {'fitted by':>10} {'nme':>6} {'iou':>5} {'time':>5}  "
          "verdict")
    for name, path in PHOTOS.items():
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        box = haar_box(rgb)
        for variant, image, warp in variants(rgb):
            t0 = time.perf_counter()
            try:
                result = reconstruct(image.astype(np.float32) / 255.0, registry, settings)
            except Pixel3DMMError as exc:
                print(f"{name:>13} {variant:>13} {'-':>6} {'-':>6} {'-':>5} {'-':>5} {'-':>10} {'-':>6} {'-':>5} "
                      f"{time.perf_counter() - t0:5.0f}  "
                      f"refused: {exc}", flush=True)
                continue
            fit = result.fit
            cam = fit.vertices_posed.astype(np.float64) - np.array([0.0, 0.0, 1.0])
            k = fit.K_photo
            x = k[0, 0] * cam[:, 0] / -cam[:, 2] + k[0, 2]
            y = -k[1, 1] * cam[:, 1] / -cam[:, 2] + k[1, 2]
            face = derive_regions(result.flame.v_template, result.flame.faces, result.flame.J_regressor).silhouette
            bx, by, bw = carried_box(box, warp)
            ratio = (x.max() - x.min()) / bw
            off = np.hypot(x[face].mean() - bx, y[face].mean() - by) / bw
            jaw = float(np.linalg.norm(fit.jaw_pose))
            sane = 0.9 <= ratio <= 2.2 and off < 0.35 and jaw < 0.7
            m = fit.verdict.metrics
            print(f"{name:>13} {variant:>13} {ratio:6.2f} {off:6.2f} {jaw:5.2f} {str(sane):>5} {fit.info['mode']:>10} "
                  f"{m.get('landmark_nme', float('nan')):6.3f} {m.get('silhouette_iou', float('nan')):5.2f} {time.perf_counter() - t0:5.0f}  {fit.verdict.summary()}", flush=True)


if __name__ == "__main__":
    main()
