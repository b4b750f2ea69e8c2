"""Multi-GPU (and multi-process CPU) training with ``torchrun``: what the bundles' ``multi_gpu_train.json`` use.

Each ``multi_gpu_train.json`` is merged over its bundle's ``train.json`` (Model Zoo pattern) and changes only:

- ``initialize``: :func:`init_process_group` (``nccl`` on CUDA, ``gloo`` on CPU; ``torchrun`` sets the rank and
  world size in the environment) and :func:`quiet_unless_rank_zero`; ``finalize``: :func:`destroy_process_group`;
- ``device``: :func:`local_device` (``cuda:<LOCAL_RANK>``, or the CPU);
- the trainer's network: :func:`wrap_ddp`, a :class:`DistributedNetwork` (``DistributedDataParallel``) around the
  bundle's ``network``. ``network`` itself stays the plain module, so checkpoints, the evaluator and every
  ``@network`` reference see it unchanged and saved keys have no ``module.`` prefix;
- the samplers: ``DistributedSampler`` (or MONAI's ``DistributedWeightedRandomSampler`` where the single-process
  config samples with replacement);
- the handler lists: :func:`rank_handlers` keeps every handler on rank 0; on the other ranks it drops those that only
  write or log (stats, TensorBoard, MLflow, progress bars, checkpoint savers, reports) and gives every
  :class:`~common.handlers.resume.ResumableCheckpoint` a :class:`RankZeroCheckpoint` replacement that resumes and
  reseeds on every rank but writes ``last.pt`` on rank 0 only;
- :class:`GradientAllReduce`: averages, across processes, the gradients of optimised parameters that are not inside
  the DDP network (e.g. the learnable projections of the distillation losses), which DDP does not see.

Why so: ``DistributedDataParallel`` synchronises gradients only for parameters of the module it wraps and only when
its own ``forward`` runs; the distillation trainer calls ``network.forward_features`` for feature terms, which
:class:`DistributedNetwork` routes through DDP's ``forward``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from datetime import timedelta
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.handlers.resume import ResumableCheckpoint, derive_seed

__all__ = [
    "fixed_length_sampler",
    "DistributedNetwork",
    "GradientAllReduce",
    "RankZeroCheckpoint",
    "default_backend",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_rank_zero",
    "local_device",
    "quiet_unless_rank_zero",
    "rank_handlers",
    "rank_zero_first",
    "wrap_ddp",
]

# Handlers that only write files or logs: rank 0 runs them, the other ranks drop them (matched by class name along
# the MRO, so subclasses count and the bundles' own handlers need no import here).
OUTPUT_HANDLERS = frozenset(
    {
        "StatsHandler",
        "TensorBoardStatsHandler",
        "TensorBoardImageHandler",
        "MLFlowHandler",
        "ClearMLStatsHandler",
        "ClearMLImageHandler",
        "CheckpointSaver",
        "ProgressBar",
        "SegmentationReport",
        "SampleGrid",
        "TeacherExport",
        "FinalModel",
    }
)

logger = logging.getLogger(__name__)


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def fixed_length_sampler(dataset: Sized, batches_per_epoch: int, batch_size: int, seed: int = 0):
    """Draw ``batches_per_epoch`` × ``batch_size`` items per epoch, with replacement, whatever the dataset's size (the
    3D bundle's patch-sampling epochs): a ``RandomSampler``; under ``torch.distributed``, MONAI's
    ``DistributedWeightedRandomSampler`` with equal weights, each rank drawing ceil(batches / world size) batches."""
    from monai.data import DistributedWeightedRandomSampler
    from torch.utils.data import RandomSampler

    if not (dist.is_available() and dist.is_initialized()):
        return RandomSampler(dataset, replacement=True, num_samples=int(batches_per_epoch) * int(batch_size))
    per_rank = math.ceil(int(batches_per_epoch) / get_world_size()) * int(batch_size)
    return DistributedWeightedRandomSampler(
        dataset, weights=[1.0] * len(dataset), num_samples_per_rank=per_rank, even_divisible=True, seed=seed
    )


def is_rank_zero() -> bool:
    """True on rank 0 and when not distributed: the process that writes checkpoints and logs."""
    return get_rank() == 0


def default_backend() -> str:
    """``nccl`` when CUDA (and NCCL) are there, else ``gloo`` (CPU)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` (made the current CUDA device) when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); nothing when already initialised. Returns True.

    Raises:
        RuntimeError: not started by ``torchrun`` (no ``WORLD_SIZE``/``RANK`` in the environment), with the command.
    """
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi_gpu_train.json needs torchrun (the environment has no {missing}): run e.g. "
            "`torchrun --nproc_per_node 2 -m monai.bundle run --config_file \"['configs/train.json',"
            "'configs/multi_gpu_train.json']\"`."
        )
    backend = backend or default_backend()
    if backend == "nccl":
        local_device()
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def destroy_process_group() -> bool:
    """Leave the process group (after a barrier, so rank 0 finishes writing before the others exit), and tell
    ignite's ``idist`` (which MONAI's handlers ask for the rank) that the process is serial again."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    idist.sync()
    return True


def quiet_unless_rank_zero(*engines: Any) -> None:
    """Engines on ranks other than 0 log warnings and errors only (their INFO lines would repeat rank 0's)."""
    if not is_rank_zero():
        for engine in engines:
            engine.logger.setLevel(logging.WARNING)


def rank_zero_first(build: Callable[[], Any]) -> Any:
    """``build()`` on rank 0 first, then on the other ranks: for datasets whose construction writes shared files
    (the teacher cache: rank 0 fills it, the others read it), so two processes never write the same file."""
    if is_rank_zero():
        result = build()
        if get_world_size() > 1:
            dist.barrier()
        return result
    dist.barrier()
    return build()


class _FeatureRouter(nn.Module):
    """Holds the network for DDP; ``forward(..., return_features=True)`` calls ``forward_features``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, return_features: bool = False, **kwargs: Any) -> Any:
        if return_features:
            return self.module.forward_features(*args, **kwargs)
        return self.module(*args, **kwargs)


class DistributedNetwork(DistributedDataParallel):
    """``DistributedDataParallel`` whose ``forward_features`` also runs through DDP's ``forward`` (so its gradients
    are synchronised), and which answers other attribute look-ups (``num_classes``, ``feature_channels``, ...) from
    the wrapped network. :attr:`network` is the plain network."""

    def __init__(self, network: nn.Module, **kwargs: Any) -> None:
        super().__init__(_FeatureRouter(network), **kwargs)

    @property
    def network(self) -> nn.Module:
        return self.module.module

    def forward_features(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, return_features=True, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The plain network's state dict (no ``module.`` prefixes): handlers that save or reload the trainer's
        network (e.g. the teacher export) read and write the single-process format."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            router = self.__dict__.get("_modules", {}).get("module")
            if router is None or name.startswith("_"):
                raise
            return getattr(router.module, name)


def wrap_ddp(network: nn.Module, device: torch.device | str | None = None, find_unused_parameters: bool = True):
    """``network`` in a :class:`DistributedNetwork` (``device_ids`` on CUDA). ``find_unused_parameters`` defaults
    to True because a stage may leave heads unused (e.g. features only in some distillation stages). Returns the
    network itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return network
    device = torch.device(device) if device is not None else next(network.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return DistributedNetwork(network, device_ids=ids, find_unused_parameters=find_unused_parameters)


class GradientAllReduce:
    """Trainer handler: after each backward pass, average across processes the gradients of the optimiser's
    parameters that the DDP network does not hold (DDP averages its own). Parameters without a gradient on every
    rank keep ``None`` (so AdamW skips them, as in a single process)."""

    def __init__(self, optimizer: torch.optim.Optimizer, ddp_network: nn.Module | None = None) -> None:
        own = {id(p) for p in ddp_network.parameters()} if ddp_network is not None else set()
        self.params = [
            p for group in optimizer.param_groups for p in group["params"] if p.requires_grad and id(p) not in own
        ]

    def attach(self, engine: Engine) -> None:
        if self.params and get_world_size() > 1:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.params or get_world_size() == 1:
            return
        device = self.params[0].device
        has = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32, device=device)
        dist.all_reduce(has)
        chosen = [p for p, n in zip(self.params, has.tolist()) if n > 0]
        if not chosen:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in chosen])
        dist.all_reduce(flat)
        flat /= get_world_size()
        offset = 0
        for p in chosen:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


class RankZeroCheckpoint(ResumableCheckpoint):
    """:class:`~common.handlers.resume.ResumableCheckpoint` for ``torchrun``: every rank resumes from ``last.pt``,
    only rank 0 writes it. Ranks other than 0 reseed from a seed of their own, so their random crops and
    augmentations differ from rank 0's (rank 0 draws exactly what a single process would)."""

    @classmethod
    def like(cls, handler: ResumableCheckpoint) -> RankZeroCheckpoint:
        """The same checkpoint settings as ``handler`` (a handler the config already built)."""
        return cls(
            save_dir=handler.path.parent,
            save_dict=handler.save_dict,
            save_interval=handler.save_interval,
            resume=handler.resume_path if handler.resume_path is not None else False,
            seed=handler.seed,
            filename=handler.path.name,
            evaluator=handler.evaluator,
            best_saver=handler.best_saver,
            best_filename=handler.best_filename,
        )

    @contextlib.contextmanager
    def _rank_seed(self) -> Iterator[None]:
        seed = self.seed
        if seed is not None and get_rank() > 0:
            self.seed = derive_seed(seed, 2, get_rank())
        try:
            yield
        finally:
            self.seed = seed

    def _seed_epoch(self, engine: Engine) -> None:
        with self._rank_seed():
            super()._seed_epoch(engine)

    def _seed_iteration(self, engine: Engine) -> None:
        with self._rank_seed():
            super()._seed_iteration(engine)

    def save(self, engine: Engine) -> None:
        """Rank 0 writes ``last.pt``; the others only record which checkpoint is the last good one."""
        if is_rank_zero():
            super().save(engine)
        else:
            engine.state.last_checkpoint = {"path": str(self.path), "iteration": int(engine.state.iteration)}


def _is_output_handler(handler: Any) -> bool:
    return any(c.__name__ in OUTPUT_HANDLERS for c in type(handler).__mro__)


def rank_handlers(handlers: Iterable[Any] | None, extra: Sequence[Any] = ()) -> list[Any] | None:
    """A handler list for this rank: ``handlers`` (plus ``extra``) with every ResumableCheckpoint as a
    :class:`RankZeroCheckpoint`; on ranks other than 0 without the handlers that only write or log."""
    if handlers is None and not extra:
        return None
    out = []
    for h in [*(handlers or []), *extra]:
        if h is None:
            continue
        if isinstance(h, ResumableCheckpoint) and not isinstance(h, RankZeroCheckpoint):
            h = RankZeroCheckpoint.like(h)
        if is_rank_zero() or not _is_output_handler(h):
            out.append(h)
    return out
