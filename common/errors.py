"""Errors in what the user gave (data, checkpoints, settings), reported as one clear line on the command line.

MONAI's config parser wraps every exception raised while it builds a component in ``RuntimeError("Failed to
instantiate ...")``, so a plain ``raise`` ends in a long traceback through the parser. :func:`install_excepthook`
(run when ``common`` is imported) prints only ``error: <message>`` when an :class:`InputError` is anywhere in the
chain of an uncaught exception, and exits with status 1. Set ``COMMON_FULL_TRACEBACK=1`` to see the traceback.
"""

from __future__ import annotations

import os
import sys

__all__ = ["InputError", "DataError", "CheckpointError", "NonFiniteLossError", "install_excepthook"]


class InputError(ValueError):
    """Bad input from the user: the message names the file or setting and the fix."""


class DataError(InputError):
    """A dataset problem: missing or unreadable file, shape mismatch, label out of range, empty split."""


class CheckpointError(InputError):
    """A checkpoint that is missing or does not fit the configured architecture."""


class NonFiniteLossError(InputError):
    """A loss term became NaN or Inf: the message names the term, the batch and the last good checkpoint. Its cause
    is in the settings (a learning rate too high, a temperature of 0) or in the data, so it is reported as bad
    input rather than as a crash."""


def _find_input_error(exc: BaseException | None) -> InputError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> None:
    """Make uncaught exceptions caused by an :class:`InputError` print one line instead of a traceback."""
    previous = sys.excepthook
    if getattr(previous, "_input_error_hook", False):
        return

    def hook(exc_type, exc, tb):
        found = _find_input_error(exc)
        if found is None or os.environ.get("COMMON_FULL_TRACEBACK"):
            previous(exc_type, exc, tb)
            return
        print(f"error: {found}\n(set COMMON_FULL_TRACEBACK=1 for the full traceback)", file=sys.stderr, flush=True)
        sys.exit(1)

    hook._input_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
