"""Reading and writing weight files safely: plain tensor dicts, ``weights_only=True``, atomic writes, and one way
to say why a state dict does not fit a network."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from common.errors import CheckpointError

__all__ = ["atomic_save", "optional_path", "read_checkpoint", "read_state_dict", "mismatch_report", "load_checked"]


_NO_PATH = ("", "null", "none")


def optional_path(value: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``value``, or None for no file: None itself, or the strings ``null``/``None``/``none``/``''`` that a command
    line (``--teacher_ckpt null``) gives instead of JSON null, which would otherwise be looked up as a file name."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_PATH):
        return None
    return value


def atomic_save(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``: a crash (even a kill or a
    power cut) never leaves a half-written file there, and the previous file stays intact until the new one is
    complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict:
    """The dict saved at ``path``, read with ``weights_only=True`` (tensors, numbers, strings and containers only:
    nothing is unpickled); a missing, unreadable or non-dict file is a :class:`CheckpointError` naming ``what``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: '{path}'.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file means the same to the user
        raise CheckpointError(f"cannot read {what} '{path}': {err}") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} '{path}' is not a dict (got {type(state).__name__}).")
    return dict(state)


def read_state_dict(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A tensor state dict from ``path`` with ``weights_only=True`` (nothing is unpickled), unwrapped from a
    ``model`` / ``state_dict`` entry (ignite checkpoints, official releases); clear errors name ``what``."""
    state = read_checkpoint(path, what)
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} '{path}' is not a state dict of tensors (got {type(state).__name__}).")
    return dict(state)


def mismatch_report(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], required: set[str] | None = None
) -> str:
    """'' when ``state`` fits ``own`` (every key of ``required``, default all of ``own``, present; nothing
    unexpected; same shapes), else a one-line summary of what does not."""
    required = set(own) if required is None else required
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]  # fmt: skip
    if not (missing or unexpected or mismatched):
        return ""
    return (
        f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
        f"{len(mismatched)} shape mismatches {mismatched[:3]}"
    )


def load_checked(network: torch.nn.Module, path: str | os.PathLike[str], what: str, misfit: str) -> None:
    """Load the state dict at ``path`` strictly into ``network``; one that does not fit is a :class:`CheckpointError`
    ``"<misfit>: <what does not fit>"``, so the caller's message says which network was expected."""
    state = read_state_dict(path, what)
    report = mismatch_report(network.state_dict(), state)
    if report:
        raise CheckpointError(f"{misfit}: {report}")
    network.load_state_dict(state)
