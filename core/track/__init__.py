"""Tracking a clip or several photos of one person: one identity, per-frame motion (:class:`Track`)."""

from .result import TRACK_ARRAYS, Track

__all__ = ["Track", "TRACK_ARRAYS"]
