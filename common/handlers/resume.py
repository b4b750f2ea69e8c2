"""Resumable training: the whole training state in one checkpoint, replaced atomically, and ``--resume true``.

:class:`ResumableCheckpoint` is a trainer handler that

- writes ``<save_dir>/last.pt`` every ``save_interval`` iterations and at the end of every epoch: each entry of
  ``save_dict`` (network, optimiser, scheduler, loss modules, best-model bookkeeping) plus the trainer's epoch and
  iteration (and the AMP grad scaler). It is written to a temporary file and renamed
  (:func:`common.checkpoints.atomic_save`), so ``last.pt`` is always the last *complete* checkpoint, whenever the
  process dies. Its saving is registered when the trainer starts, i.e. after every other handler, so it sees the
  lr-scheduler step of its iteration and the validation of its epoch;
- with ``resume`` set, loads it (``weights_only=True``) when the trainer starts and continues from the saved
  iteration, in the middle of an epoch when that is where it was written: the epoch's first batches are drawn again
  and dropped, so the data order and augmentation continue exactly;
- with ``seed`` set, reseeds python, numpy, torch and the dataset's random transforms from (seed, epoch) when each
  epoch starts and from (seed, iteration) before each step, so what any iteration draws does not depend on what ran
  before it in this process. This is what makes a resumed run end with the same weights, bit for bit on CPU, as an
  uninterrupted one (a test kills a run with SIGKILL and checks it). DataLoader workers must be re-created each
  epoch (``persistent_workers=False``, the default) for their transforms to be reseeded.

Networks are saved without their frozen parameters: trainable parameters and all buffers (for the teacher: the
LoRA adapter, prompt encoder, mask decoder and normalisation statistics; its frozen image encoder is rebuilt from
``teacher_ckpt``). Everything else is saved with its own ``state_dict``.
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from torch import nn

from common.checkpoints import atomic_save, mismatch_report, read_checkpoint
from common.errors import CheckpointError

__all__ = [
    "LAST_CHECKPOINT",
    "ResumableCheckpoint",
    "derive_seed",
    "restore_key_metric",
    "module_state",
    "load_module_state",
]

LAST_CHECKPOINT = "last.pt"
TRAINER_KEY = "trainer"
SCALER_KEY = "grad_scaler"
BEST_KEY = "best_metric"
_FALSE = {"", "0", "false", "no", "none", "off"}
_TRUE = {"1", "true", "yes", "on"}


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 32-bit seed from ``seed`` and ``keys`` (numpy ``SeedSequence``), e.g. one per epoch."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1)[0])


def _reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else module


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict without its frozen parameters (trainable parameters and all buffers)."""
    module = _unwrap(module)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a :func:`module_state` dict; keys or shapes that do not fit are a :class:`CheckpointError`."""
    module = _unwrap(module)
    own = module_state(module)
    problem = mismatch_report(own, state)
    if problem:
        raise CheckpointError(f"{what} does not fit this network: {problem}.")
    module.load_state_dict(dict(state), strict=False)


def restore_key_metric(saver: Any, evaluator: Engine, best: Mapping[str, Any], filename: str) -> None:
    """Give the validation ``evaluator`` and its best-model ``saver`` (a MONAI ``CheckpointSaver`` with
    ``save_key_metric=True``) back the best key metric of an interrupted run: ``best`` is ``{"value", "epoch"}`` as
    :class:`ResumableCheckpoint` recorded it from the evaluator's public ``state.best_metric``. The saver learns it
    through its public ``load_state_dict`` (ignite ``Checkpoint`` state: the saved file and its score), so a resumed
    run compares its validations with the best one before the crash instead of overwriting the best model with its
    first validation."""
    evaluator.state.best_metric = best["value"]
    evaluator.state.best_metric_epoch = best["epoch"]
    if int(best["epoch"]) >= 0:  # a best model was saved before the crash
        saver.load_state_dict({"_saved": [(float(best["value"]), filename)]})  # ignite Checkpoint.state_dict form


def _plain(obj: Any) -> Any:
    """numpy scalars → Python numbers, recursively, so ``torch.load(weights_only=True)`` reads the file back."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = [(k, _plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _resume_path(resume: bool | str | os.PathLike[str] | None, default: Path) -> Path | None:
    """``resume`` as given on the command line: true/false (as a bool or a word), or the path of a checkpoint."""
    if resume is None or resume is False:
        return None
    if resume is True:
        return default
    text = str(resume).strip()
    if text.lower() in _FALSE:
        return None
    if text.lower() in _TRUE:
        return default
    return Path(text)


class _SkipFirstBatches:
    """``data`` whose next iterator first draws and drops ``count`` batches (so random transforms advance as they
    did in the interrupted run); later iterators are plain."""

    def __init__(self, data: Iterable, count: int) -> None:
        self.data, self.count = data, count

    def __iter__(self) -> Iterator:
        iterator = iter(self.data)
        for _ in range(self.count):
            next(iterator)
        self.count = 0
        return iterator

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


class ResumableCheckpoint:
    """Trainer handler: write ``save_dir/last.pt`` atomically every ``save_interval`` iterations and every epoch;
    resume from it when ``resume`` is set; reseed per epoch and iteration when ``seed`` is set (module docstring).

    Args:
        save_dir: the folder of ``last.pt`` (the bundle's ``ckpt_dir``).
        save_dict: name → object with ``state_dict``/``load_state_dict`` (networks, optimiser, scheduler, loss
            modules); ``trainer`` and ``grad_scaler`` are added by the handler.
        save_interval: iterations between checkpoints within an epoch (0: at epoch ends only).
        resume: false; true (continue from ``save_dir/last.pt``, which must exist); or the path of a checkpoint
            this handler wrote. Words (``"true"``, ``"false"``) are accepted as the command line gives them.
        seed: the run's seed, for per-epoch and per-iteration reseeding; None leaves the random state alone (a
            resumed run then continues correctly but not bit-identically).
        filename: the checkpoint's file name.
        evaluator: the validation engine; its best key metric is recorded in the checkpoint and, on resume,
            given back to it and to ``best_saver`` (:func:`restore_key_metric`).
        best_saver: the validation's ``CheckpointSaver`` of the best model (``save_key_metric=True``).
        best_filename: the file that saver writes (``model.pt``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        save_dict: Mapping[str, Any],
        save_interval: int = 50,
        resume: bool | str | os.PathLike[str] | None = False,
        seed: int | None = None,
        filename: str = LAST_CHECKPOINT,
        evaluator: Engine | None = None,
        best_saver: Any = None,
        best_filename: str = "model.pt",
    ) -> None:
        reserved = {TRAINER_KEY, SCALER_KEY, BEST_KEY} & set(save_dict)
        if reserved:
            raise ValueError(f"save_dict names {sorted(reserved)} are reserved for the trainer's own state.")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.resume_path = _resume_path(resume, self.path)
        self.seed = None if seed is None else int(seed)
        self.evaluator, self.best_saver, self.best_filename = evaluator, best_saver, best_filename
        if best_saver is not None and evaluator is None:
            raise ValueError("best_saver needs the evaluator whose best metric it follows.")
        self._saving_attached = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.resume_path is not None and not self.resume_path.is_file():
            what = "--resume true needs the last checkpoint" if self.resume_path == self.path else "resume checkpoint"
            raise CheckpointError(
                f"{what} '{self.resume_path}', which does not exist. Check bundle_root / ckpt_dir (the folder of "
                "the interrupted run), or start afresh without --resume."
            )
        engine.add_event_handler(Events.STARTED, self._started)
        if self.seed is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self._seed_epoch)
            engine.add_event_handler(Events.ITERATION_STARTED, self._seed_iteration)

    # seeding ----------------------------------------------------------------------------------------------------
    def _seed_epoch(self, engine: Engine) -> None:
        """Data order (the sampler draws from torch's global generator when the epoch's iterator starts) and the
        transforms' random states (with workers, MONAI reseeds them from that same generator) depend on the epoch
        alone."""
        seed = derive_seed(self.seed, 0, engine.state.epoch)
        _reseed(seed)
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)

    def _seed_iteration(self, engine: Engine) -> None:
        """Dropout and any other draw of the training step depend on the iteration alone."""
        _reseed(derive_seed(self.seed, 1, engine.state.iteration))

    # saving -----------------------------------------------------------------------------------------------------
    def _started(self, engine: Engine) -> None:
        if self.resume_path is not None:
            self.load(engine, self.resume_path)
            self.resume_path = None  # a second run() of the same engine does not resume again
        if not self._saving_attached:  # registered now, after every other handler of these events
            if self.save_interval > 0:
                engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self._save_in_epoch)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
            self._saving_attached = True

    def _save_in_epoch(self, engine: Engine) -> None:
        # the epoch's last iteration is saved at EPOCH_COMPLETED, after its validation
        if engine.state.iteration % engine.state.epoch_length:
            self.save(engine)

    def state(self, engine: Engine) -> dict[str, Any]:
        """What :meth:`save` writes: every ``save_dict`` entry, the trainer's counters and the AMP scaler."""
        state: dict[str, Any] = {}
        for name, obj in self.save_dict.items():
            state[name] = module_state(obj) if isinstance(obj, nn.Module) else _plain(obj.state_dict())
        state[TRAINER_KEY] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "epoch_length": int(engine.state.epoch_length),
            "max_epochs": int(engine.state.max_epochs),
            "seed": self.seed,
        }
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            state[SCALER_KEY] = _plain(scaler.state_dict())
        if self.evaluator is not None:
            best = self.evaluator.state
            state[BEST_KEY] = {"value": float(best.best_metric), "epoch": int(best.best_metric_epoch)}
        return state

    def save(self, engine: Engine) -> None:
        """Replace ``last.pt`` atomically with the current state."""
        atomic_save(self.state(engine), self.path)
        engine.state.last_checkpoint = {"path": str(self.path), "iteration": int(engine.state.iteration)}
        self.logger.info("Saved %s (epoch %d, iteration %d).", self.path, engine.state.epoch, engine.state.iteration)

    # resuming ---------------------------------------------------------------------------------------------------
    def load(self, engine: Engine, path: str | os.PathLike[str]) -> None:
        """Restore every ``save_dict`` entry and the trainer's epoch and iteration from ``path``."""
        ckpt = read_checkpoint(path, "resume checkpoint")
        counters = ckpt.get(TRAINER_KEY)
        if not isinstance(counters, Mapping):
            raise CheckpointError(f"'{path}' is not a resumable checkpoint (it has no '{TRAINER_KEY}' entry).")
        missing = sorted(set(self.save_dict) - set(ckpt))
        if missing:
            raise CheckpointError(
                f"'{path}' has no {missing} (it holds {sorted(set(ckpt) - {TRAINER_KEY, SCALER_KEY})}): it was "
                "written by another configuration."
            )
        epoch_length, saved_length = int(engine.state.epoch_length), int(counters["epoch_length"])
        if saved_length != epoch_length:
            raise CheckpointError(
                f"'{path}' was written with {saved_length} iterations per epoch, this run has {epoch_length}: the "
                "datalist or batch_size changed, so the run cannot continue where it stopped."
            )
        iteration = int(counters["iteration"])
        if iteration > epoch_length * int(engine.state.max_epochs):
            raise CheckpointError(
                f"'{path}' is at iteration {iteration}, past this run's {engine.state.max_epochs} epochs: raise "
                "epochs to train further."
            )
        if self.seed is not None and counters.get("seed") != self.seed:
            self.logger.warning(
                "'%s' was written with seed %s, this run has seed %s: the continued run will not match an "
                "uninterrupted one.",
                path,
                counters.get("seed"),
                self.seed,
            )
        for name, obj in self.save_dict.items():
            what = f"entry '{name}' of '{path}'"
            if isinstance(obj, nn.Module):
                load_module_state(obj, ckpt[name], what)
                continue
            try:
                obj.load_state_dict(ckpt[name])
            except (ValueError, KeyError, RuntimeError, TypeError) as err:
                raise CheckpointError(f"{what} does not fit this run's {name}: {err}") from None
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and SCALER_KEY in ckpt:
            scaler.load_state_dict(ckpt[SCALER_KEY])
        if self.evaluator is not None and isinstance(ckpt.get(BEST_KEY), Mapping):
            if self.best_saver is not None:
                restore_key_metric(self.best_saver, self.evaluator, ckpt[BEST_KEY], self.best_filename)
            else:
                self.evaluator.state.best_metric = ckpt[BEST_KEY]["value"]
                self.evaluator.state.best_metric_epoch = ckpt[BEST_KEY]["epoch"]
        engine.state.iteration = iteration
        engine.state.epoch = iteration // epoch_length
        skip = iteration % epoch_length
        if skip:
            engine.state.dataloader = _SkipFirstBatches(engine.state.dataloader, skip)
        engine.state.last_checkpoint = {"path": str(path), "iteration": iteration}
        self.logger.info(
            "Resumed from %s: epoch %d, iteration %d%s.",
            path,
            engine.state.epoch + (1 if skip else 0),
            iteration,
            f" (the epoch's first {skip} batches are drawn again and skipped)" if skip else "",
        )
