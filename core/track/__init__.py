"""Tracking a clip or several photos of one person: one identity, per-frame motion.

:func:`track` (video file, folder of frames, or photos -> :class:`TrackedClip` with its :class:`Track`),
:class:`TrackSettings`, :func:`open_clip` (:mod:`.clip`), and the stored form of a track (:mod:`.result`:
``track.npz`` + ``track.json``).
"""

from .clip import Clip, open_clip
from .result import TRACK_ARRAYS, Track
from .tracker import TrackedClip, TrackSettings, default_work_dir, track

__all__ = ["Clip", "Track", "TRACK_ARRAYS", "TrackSettings", "TrackedClip", "default_work_dir", "open_clip", "track"]
