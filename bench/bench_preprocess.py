"""Per-photo time of intake + detection + crop + landmarks + masks on a 512 px, 6000×4000 and 1600×1200 photos.

Run: ``.venv/bin/python bench/bench_preprocess.py [--repeat N]``. Prints one line per stage (median and
min over the repeats) for each photo. The 6000 px photos are the astronaut scaled to 4000 px or 2000 px on a
gradient canvas with mild noise (about 4 MB JPEG, q92); the 1600×1200 one has the astronaut's face 83 px wide,
too small for the whole-photo detection preview. All are written to a temporary folder. The first mediapipe
import is timed separately and excluded from the per-photo figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.preprocess import crop_face, detect_faces, load_photo  # noqa: E402
from core.preprocess import _mediapipe  # noqa: E402
from core.preprocess.masks import masks_from_landmarks  # noqa: E402
from core.preprocess.transform import render_crop  # noqa: E402


def _astronaut() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def _large_jpeg(folder: Path, face_px: int) -> Path:
    """6000×4000 JPEG with the astronaut photo scaled to ``face_px`` (its face box is about face_px / 5)."""
    face = cv2.imread(str(_astronaut()))
    canvas = np.empty((4000, 6000, 3), np.uint8)
    canvas[:] = np.linspace(40, 200, 6000, dtype=np.float32)[None, :, None].astype(np.uint8)
    x0, y0 = 3000 - face_px // 2, 4000 - face_px
    canvas[y0:y0 + face_px, x0:x0 + face_px] = cv2.resize(face, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 4, canvas.shape).astype(np.float32)
    canvas = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    path = folder / f"large_6000x4000_astronaut{face_px}.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def _wide_jpeg(folder: Path, face_px: int) -> Path:
    """1600×1200 JPEG with the astronaut photo scaled so its face box is ``face_px`` wide (104 px in the original):
    a small face in a large photo, found only by the zoomed detection pass."""
    face = cv2.imread(str(_astronaut()))
    side = round(512 * face_px / 104)
    canvas = np.empty((1200, 1600, 3), np.uint8)
    canvas[:] = np.linspace(60, 190, 1600, dtype=np.float32)[None, :, None].astype(np.uint8)
    canvas[600:600 + min(side, 600), 900:900 + side] = cv2.resize(face, (side, side),
                                                                 interpolation=cv2.INTER_AREA)[:600]
    path = folder / f"wide_1600x1200_face{face_px}.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def _time(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def bench(path: Path, repeat: int) -> None:
    print(f"\n{path.name} ({path.stat().st_size / 1e6:.1f} MB)")

    def pipeline():
        photo = load_photo(path)
        return crop_face(photo)

    rows = [("total: load_photo + crop_face (detect, crop, mesh, selfie, masks)", pipeline)]
    photo = load_photo(path)
    det = detect_faces(photo)[0]
    crop = crop_face(photo, det)
    rows += [
        ("  load_photo (header + EXIF only)", lambda: load_photo(path)),
        ("  detect_faces (1/8 decode, 2 models, refinement)", lambda: detect_faces(load_photo(path))),
        ("  render_crop (decode at the scale needed + warp)", lambda: render_crop(load_photo(path), crop.transform)),
        ("  face mesh on the crop", lambda: _mediapipe.face_mesh((crop.image * 255).astype(np.uint8))),
        ("  selfie segmentation on the crop", lambda: _mediapipe.selfie_segmentation((crop.image * 255)
                                                                                      .astype(np.uint8))),
        ("  masks from landmarks", lambda: masks_from_landmarks(crop.landmarks, 512, crop.masks["valid"],
                                                                 crop.masks["foreground"])),
        ("  reference: full-resolution decode", lambda: load_photo(path).pixels(1)),
    ]
    for label, fn in rows:
        median, best, _ = _time(fn, repeat)
        print(f"{label:<70} median {median * 1e3:7.1f} ms   min {best * 1e3:7.1f} ms")
    print(f"  crop side {crop.transform.size:.0f} px of photo {photo.original_size}; "
          f"{'landmarks' if crop.landmarks is not None else 'NO landmarks'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    start = time.perf_counter()
    _mediapipe.face_mesh(np.zeros((64, 64, 3), np.uint8))
    print(f"first mediapipe import + graph: {time.perf_counter() - start:.2f} s (once per session, excluded)")
    with tempfile.TemporaryDirectory() as folder:
        small = Path(folder) / "astronaut_512.jpg"
        cv2.imwrite(str(small), cv2.imread(str(_astronaut())), [cv2.IMWRITE_JPEG_QUALITY, 95])
        bench(small, args.repeat)
        bench(_large_jpeg(Path(folder), 4000), args.repeat)   # big face: the crop decodes at 1/2
        bench(_large_jpeg(Path(folder), 2000), args.repeat)   # smaller face: the crop needs full resolution
        bench(_wide_jpeg(Path(folder), 83), args.repeat)       # small face: the zoomed detection pass finds it


if __name__ == "__main__":
    main()
