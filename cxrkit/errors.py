"""Errors meant for people: each names the file, row or key and the problem.

The CLI catches :class:`CxrkitError` and prints its message without a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class CxrkitError(Exception):
    """Base class of every error a user can cause (bad input, missing file, bad config)."""


class ConfigError(CxrkitError):
    """An unknown key, a wrong type or an invalid value in a configuration."""


class DataError(CxrkitError):
    """Malformed dataset input: a CSV missing a column, an unknown class, a box off its image."""


class ImageReadError(DataError):
    """An image file that is missing, empty, truncated or undecodable."""


class DicomReadError(ImageReadError):
    """A DICOM file that cannot be turned into pixels (no pixel data, missing codec, corrupt)."""


class MissingFileError(CxrkitError):
    """A file the user must provide (weights, manifest, checkpoint) is not there."""


class NonFiniteLossError(CxrkitError):
    """A loss became NaN or infinite; the message names the step, the term and the images."""


class CheckpointError(CxrkitError):
    """A checkpoint or model file that is torn, empty, of the wrong kind, or unsafe to unpickle."""
