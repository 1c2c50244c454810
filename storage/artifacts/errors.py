"""Exceptions raised when a non-DICOM artifact cannot be turned into DICOM."""

from __future__ import annotations


class ArtifactError(ValueError):
    """Base class: the artifact cannot be encapsulated or extracted."""


class UnsupportedArtifact(ArtifactError):
    """The artifact's type (or a variant of it, e.g. CMYK JPEG) is not supported."""


class InvalidArtifact(ArtifactError):
    """The artifact is empty, truncated, corrupt or not what its name/label says."""


class ArtifactTooLarge(ArtifactError):
    """The artifact exceeds the configured or the DICOM size limit."""
