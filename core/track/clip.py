"""What the tracker reads: a video file, a folder of frames, or several photos of one person.

:func:`open_clip` checks the source and says in one sentence what is wrong with it (unreadable, no frames, not a
video); :meth:`Clip.frames` yields ``(index, Photo)`` for every ``stride``-th frame. Videos are decoded with
OpenCV's bundled FFmpeg (mp4, mov, avi, webm, mkv, ...). A frame whose size differs from the first one's is
yielded as ``(index, None)`` with the reason in :attr:`Clip.problems`, so the tracker reports and skips it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import ImageError
from ..preprocess import Photo, load_photo

__all__ = ["Clip", "open_clip", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "LONG_CLIP_SECONDS"]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr")
#: Clips longer than this get a warning that suggests a frame stride.
LONG_CLIP_SECONDS = 600.0


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


@dataclass
class Clip:
    """A source of frames.

    Attributes
    ----------
    kind : ``"video"``, ``"frames"`` (a folder of images) or ``"photos"`` (several photos of one person)
    source : what was given (a path, or the photos' paths joined by ``", "``)
    count : number of frames (for a video, what its header states; decoding may find fewer)
    fps : frames per second (0 for photos; 25 for a folder of frames unless stated)
    paths : the image files of a folder or of the photos, in order
    problems : frame index -> why it was not read (one sentence each), filled while iterating
    """

    kind: str
    source: str
    count: int
    fps: float
    paths: list[Path] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.source).name if self.kind != "photos" else f"{len(self.paths)} photos"

    @property
    def duration(self) -> float:
        """Seconds (0 for photos)."""
        return self.count / self.fps if self.fps > 0 else 0.0

    def frames(self, stride: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, Photo | None]]:
        """Every ``stride``-th frame as ``(index, Photo)``; ``(index, None)`` for a frame that could not be read or
        whose size differs from the first frame's (the reason in :attr:`problems`). At most ``max_frames``."""
        if stride < 1:
            raise ValueError("The frame stride must be at least 1.")
        yielded = 0
        size = None
        for index, photo in (self._video_frames(stride) if self.kind == "video" else self._file_frames(stride)):
            if max_frames is not None and yielded >= max_frames:
                return
            yielded += 1
            if photo is not None and self.kind != "photos":
                if size is None:
                    size = photo.original_size
                elif photo.original_size != size:
                    self.problems[index] = (f"Frame {index} is {photo.original_size[1]} x {photo.original_size[0]} "
                                            f"pixels, not {size[1]} x {size[0]} like the first; give frames of one size.")
                    photo = None
            yield index, photo

    def _file_frames(self, stride: int) -> Iterator[tuple[int, Photo | None]]:
        for index in range(0, len(self.paths), stride):
            try:
                yield index, load_photo(self.paths[index])
            except ImageError as exc:
                self.problems[index] = str(exc)
                yield index, None

    def _video_frames(self, stride: int) -> Iterator[tuple[int, Photo | None]]:
        import cv2

        cap = cv2.VideoCapture(self.source)
        try:
            index = 0
            while True:
                if index % stride:
                    if not cap.grab():
                        return
                else:
                    ok, bgr = cap.read()
                    if not ok or bgr is None:
                        return
                    rgb = np.ascontiguousarray(bgr[..., ::-1])
                    yield index, Photo.from_array(rgb, source=f"{self.name} frame {index}")
                index += 1
        finally:
            cap.release()


def open_clip(source: str | Path | Sequence[str | Path]) -> Clip:
    """The clip at ``source``: a video file, a folder of frames, or a list of photos (several photos of one person).

    Raises
    ------
    ImageError
        The source does not exist, is not a video OpenCV can decode, holds no frames or no images.
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ImageError(f"Photo {missing[0]} does not exist; check the path.")
        if not paths:
            raise ImageError("No photos were given; give two or more photos of one person.")
        return Clip("photos", ", ".join(str(p) for p in paths), len(paths), 0.0, paths)
    path = Path(source)
    if path.is_dir():
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)
        if not paths:
            raise ImageError(f"The folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of frames "
                             "or a video file.")
        return Clip("frames", str(path), len(paths), 25.0, paths)
    if not path.is_file():
        raise ImageError(f"The clip {path} does not exist; check the path.")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Clip("photos", str(path), 1, 0.0, [path])
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ImageError(f"'{path.name}' could not be opened as a video; use an mp4, mov, avi or webm file that "
                             "plays in a video player, or a folder of frames.")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ImageError(f"'{path.name}' holds no video frames that can be decoded; export the clip again or "
                             "give a folder of frames.")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if not (0.0 < fps < 1000.0):
        log.warning("'%s' states no usable frame rate; taking 25 frames per second.", path.name)
        fps = 25.0
    return Clip("video", str(path), max(count, 1), fps)
