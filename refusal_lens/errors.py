"""The exceptions refusal_lens raises for bad input, each naming the fix.

Every one subclasses ``ValueError`` or ``TypeError`` (so callers that catch those keep working)
and :class:`RefusalLensError` (so the command line can report any of them as one line, without
a traceback). Raised before any expensive work wherever the input can be checked up front.
"""

from __future__ import annotations

__all__ = ["RefusalLensError", "InputError", "InputTypeError", "DirectionError",
           "NonFiniteError", "PositionError", "RunDirError", "ResumeError", "ModelLoadError", "ModelSpecError",
           "DirectionTransferWarning"]


class RefusalLensError(Exception):
    """Base of every refusal_lens error about its input."""


class InputError(RefusalLensError, ValueError):
    """An argument with a value that cannot be used (out of range, empty, non-finite)."""


class InputTypeError(RefusalLensError, TypeError):
    """An argument of the wrong type or dtype (a str where a list is expected, int tensors)."""


class DirectionError(InputError):
    """A direction that does not fit the model or data it is used with, or a bad direction file."""


class NonFiniteError(InputError):
    """NaN or inf where finite numbers are needed (weights, activations, logits, vectors)."""


class PositionError(InputError, IndexError):
    """A token position outside the prompt it is applied to."""


class RunDirError(InputError, FileExistsError):
    """An output directory that cannot be used as given (a file, unwritable, not empty)."""


class ResumeError(RunDirError):
    """``--resume`` on a directory written by a run with another configuration."""


class ModelLoadError(InputError):
    """A model directory that cannot be loaded (bad config.json, truncated weights)."""


class ModelSpecError(InputError):
    """A model spec that cannot be resolved."""


class DirectionTransferWarning(UserWarning):
    """A direction fitted on one model used on another (a legitimate experiment; recorded)."""
