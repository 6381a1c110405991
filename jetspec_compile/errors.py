"""Error types: every user-facing failure is one of these, with a message naming file, field and value."""

from __future__ import annotations


class JetSpecError(ValueError):
    """Bad input: a model folder, checkpoint, artifact or argument that cannot be used as given."""


class ArtifactError(JetSpecError):
    """An artifact folder that is missing, tampered with, or built for another backend or version."""


class BackendUnavailableError(JetSpecError):
    """A backend whose libraries or device are not present on this machine."""
