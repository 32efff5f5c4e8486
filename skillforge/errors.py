"""One exception tree. Every error says what went wrong and what to do next.

The CLI maps `SkillforgeError.exit_code` to the process exit status and prints `str(error)`; nothing
else in the code base prints errors, so messages must be complete sentences a user can act on.

Exit statuses of the `skillforge` command: 0 success; 1 `verify` found corrupt or missing blobs;
2 a usage error (unknown option, missing or ill-typed value: click's usage line, no traceback) or
an invalid manifest, reference, input or edit; then one per class below (3 not found, 4 another
model's artifact, 5 a corrupt blob or artifact, 6 unsupported model, 7 model unavailable, 8 context
too long, 9 store error, 10 pack error). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SkillforgeError(Exception):
    """Base of every error skillforge raises on purpose."""

    exit_code = 1


class ManifestError(SkillforgeError):
    """A skill manifest is malformed; the message names the file (and line where known)."""

    exit_code = 2


class BadReference(SkillforgeError):
    """A `name@version` / `name@sha256:...` / pack reference does not parse."""

    exit_code = 2


class BadInput(SkillforgeError):
    """A command-line value, setting or environment variable is invalid (unknown device, dtype, URL, ...)."""

    exit_code = 2


class NotFound(SkillforgeError):
    """A skill, artifact, blob, pack or model that was asked for does not exist here."""

    exit_code = 3


class ArtifactMismatch(SkillforgeError):
    """An artifact was compiled for another model; the message names both fingerprints."""

    exit_code = 4


class CorruptBlob(SkillforgeError):
    """A blob's bytes do not hash to its address, or an artifact's structure is invalid."""

    exit_code = 5


class UnsupportedModel(SkillforgeError):
    """The model's position encoding or layout cannot be spliced exactly (e.g. dynamic RoPE)."""

    exit_code = 6


class ModelUnavailable(SkillforgeError):
    """A model reference could not be resolved or loaded (missing folder, no hub access, ...)."""

    exit_code = 7


class ContextTooLong(SkillforgeError):
    """The assembled prompt does not fit the model's context window."""

    exit_code = 8


class EditError(SkillforgeError):
    """A field edit is invalid: unknown field, bad value, or a mode that cannot apply it."""

    exit_code = 2


class StoreError(SkillforgeError):
    """A blob store could not be read or written (permissions, network, bucket missing)."""

    exit_code = 9


class PackError(SkillforgeError):
    """A pack is malformed, tampered with, or conflicts with an already published version."""

    exit_code = 10
