"""Errors raised by the core. Each message is one sentence that tells the user what to do.

The Blender add-on catches :class:`Pixel3DMMError`, reports ``str(error)`` and cancels; the CLI prints it and
exits with status 2. Anything else escaping the core is a bug.
"""


class Pixel3DMMError(Exception):
    """Base class of every error the core raises on purpose."""


class AssetError(Pixel3DMMError):
    """A user-supplied asset (FLAME model, UV template, checkpoint) is missing or unusable."""


class AssetMissingError(AssetError):
    """An asset path is not configured or the file does not exist."""


class AssetInvalidError(AssetError):
    """An asset file exists but is not what it claims to be (wrong format, truncated, wrong shapes)."""


class TopologyMismatchError(AssetInvalidError):
    """Two assets that must share FLAME's mesh (the model and its UV template, a landmark embedding) do not."""


class CheckpointError(AssetInvalidError):
    """A network checkpoint cannot be loaded (unsafe pickle, missing or unexpected keys, truncated file)."""


class DiskFullError(AssetError):
    """Not enough free disk space to write a download or a conversion; nothing was left half-written."""


class DownloadError(AssetError):
    """A network download failed (no connection, refused by the server, wrong size or checksum)."""


class OperationCancelled(Pixel3DMMError):
    """The user stopped a download or conversion; no final file was written."""


class ImageError(Pixel3DMMError):
    """The input photo cannot be read or used."""


class NoFaceError(ImageError):
    """No usable face was found in the photo."""


class FitCancelled(Pixel3DMMError):
    """The user cancelled a running reconstruction; nothing was changed."""


class TakeError(Pixel3DMMError):
    """An animation take (a Live Link Face CSV) cannot be read or written; nothing was changed."""


class ParameterFileError(Pixel3DMMError):
    """A FLAME parameter file cannot be read or does not fit the head; nothing was changed."""
