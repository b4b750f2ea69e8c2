"""A disk cache of teacher outputs, so students can distil without running the teacher every step.

An entry is keyed by the teacher's fingerprint (a hash of its merged weights and input size) and by the image's
content, so a changed teacher checkpoint or a changed image never serves a stale entry: it simply misses.
Entries are plain tensor dicts written atomically and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from common.checkpoints import atomic_save
from common.networks.lora import merged_state_dict

__all__ = [
    "teacher_fingerprint",
    "TeacherCache",
    "TeacherCacheWriter",
    "fill_teacher_cache",
    "LoadTeacherCached",
    "teacher_logits_transform",
]

logger = logging.getLogger(__name__)


def teacher_fingerprint(network: nn.Module, image_size: int | None = None) -> str:
    """sha256 of the teacher's merged weights (so the adapter form and the merged form agree) and input size."""
    h = hashlib.sha256(f"image_size={image_size}".encode())
    for name, tensor in sorted(merged_state_dict(network).items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:24]


class TeacherCache:
    """``cache_dir/<fingerprint>/<image hash>.pt`` holding the teacher outputs of one image."""

    def __init__(self, cache_dir: str | Path, fingerprint: str) -> None:
        self.root = Path(cache_dir) / fingerprint
        self.fingerprint = fingerprint

    @staticmethod
    def image_key(image: torch.Tensor | np.ndarray) -> str:
        array = np.ascontiguousarray(np.asarray(image.detach().cpu() if torch.is_tensor(image) else image, np.float32))
        return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()[:32]

    def path(self, image: torch.Tensor | np.ndarray) -> Path:
        return self.root / f"{self.image_key(image)}.pt"

    def save(self, image: torch.Tensor | np.ndarray, outputs: dict[str, torch.Tensor]) -> Path:
        # plain tensors only (a MetaTensor pickles numpy metadata, which weights_only=True rightly refuses)
        plain = {k: v.detach().cpu().contiguous().as_subclass(torch.Tensor) for k, v in outputs.items()}
        return atomic_save(plain, self.path(image))

    def load(self, image: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor] | None:
        """The entry of ``image`` (read with ``weights_only=True``), None on a miss; an unreadable entry (a disk
        error: entries are written atomically) is a :class:`DataError` naming the file to delete."""
        from common.errors import DataError

        path = self.path(image)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable entry means the same to the user
            raise DataError(
                f"teacher-cache entry '{path}' is unreadable ({err}): delete it and it is refilled."
            ) from None
        if not isinstance(entry, dict) or not torch.is_tensor(entry.get("logits")):
            raise DataError(f"teacher-cache entry '{path}' holds no 'logits' tensor: delete it and it is refilled.")
        return entry


class TeacherCacheWriter:
    """Evaluator handler: store each image's raw teacher logits (``pred`` before any post-processing) in a
    :class:`TeacherCache`. Use with an identity post-processing (see the teacher bundle's ``cache.json``).

    The fingerprint is taken when the engine starts, i.e. after a ``CheckpointLoader`` listed before this handler
    has loaded the weights."""

    def __init__(
        self, cache_dir: str | Path, network: nn.Module, image_size: int | None = None, image_key: str = "image"
    ) -> None:
        self.cache_dir, self.network, self.image_size = cache_dir, network, image_size
        self.cache: TeacherCache | None = None
        self.image_key = image_key
        self.written = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.cache = TeacherCache(self.cache_dir, teacher_fingerprint(self.network, self.image_size))

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            self.cache.save(item[self.image_key], {"logits": item["pred"].float()})
            self.written += 1


def fill_teacher_cache(
    cache_dir: str | Path,
    teacher: nn.Module,
    items: list[dict],
    image_size: int | None = None,
    image_key: str = "image",
    device: str | torch.device | None = None,
    outputs: Sequence[str] = ("logits",),
) -> TeacherCache:
    """Run the teacher once on every image of ``items`` that has no complete entry yet (images as ``LoadImage`` with
    a channel axis reads them, un-augmented) and return the cache. ``outputs`` names what is stored: ``logits``
    always, plus any key of the teacher's ``forward_features`` (e.g. ``embedding`` for feature distillation); an entry
    missing one of them is recomputed. Progress is shown; hits cost one hash each (and one read when more than the
    logits are asked for)."""
    from monai.transforms import LoadImage
    from tqdm import tqdm

    outputs = _output_names(outputs)
    cache = TeacherCache(cache_dir, teacher_fingerprint(teacher, image_size))
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    teacher.eval()
    missing = 0
    for item in tqdm(items, desc="teacher cache", leave=False):
        image = torch.as_tensor(loader(item[image_key])).float().as_subclass(torch.Tensor)
        if _has_entry(cache, image, outputs):
            continue
        with torch.no_grad():
            if outputs == ("logits",):
                out = {"logits": teacher(image[None].to(device))}
            else:
                out = teacher.forward_features(image[None].to(device))
        cache.save(image, {k: out[k][0].float() for k in outputs})
        missing += 1
    logger.info("Teacher cache %s: %d entries written, %d reused.", cache.root, missing, len(items) - missing)
    return cache


def _output_names(outputs: Sequence[str] | str) -> tuple[str, ...]:
    """``logits`` first, then the other requested outputs, without repeats."""
    names = [outputs] if isinstance(outputs, str) else list(outputs)
    return tuple(dict.fromkeys(["logits", *names]))


def _has_entry(cache: TeacherCache, image: torch.Tensor, outputs: tuple[str, ...]) -> bool:
    if outputs == ("logits",):
        return cache.path(image).is_file()
    entry = cache.load(image)
    return entry is not None and all(torch.is_tensor(entry.get(k)) for k in outputs)


class LoadTeacherCached:
    """Dictionary transform: add ``teacher_logits`` (K, *spatial) from a :class:`TeacherCache` for ``image``, and
    ``teacher_<name>`` for each other name of ``outputs`` (e.g. ``teacher_embedding``).

    Place it right after loading, before any spatial augmentation, and list ``teacher_logits`` in the spatial
    transforms' keys so the logits move with the image (an embedding is coarse: use it without spatial augmentation).
    A miss is a stale cache and stops with a clear error.
    """

    def __init__(
        self,
        cache: TeacherCache,
        image_key: str = "image",
        output_key: str = "teacher_logits",
        outputs: Sequence[str] = ("logits",),
    ) -> None:
        self.cache, self.image_key, self.output_key = cache, image_key, output_key
        self.outputs = _output_names(outputs)

    def __call__(self, data: dict) -> dict:
        from common.errors import DataError

        d = dict(data)
        image = d[self.image_key]
        name = getattr(image, "meta", {}).get("filename_or_obj", "?")
        entry = self.cache.load(image)
        if entry is None:
            raise DataError(
                f"no teacher-cache entry for image '{name}' in {self.cache.root}: the cache is stale (the image or "
                "the teacher changed). Fill it again (teacher_mode 'cache' does so at start) or use teacher_mode "
                "'online'."
            )
        logits = entry["logits"]
        if tuple(logits.shape[1:]) != tuple(image.shape[1:]):
            raise DataError(
                f"teacher-cache entry '{self.cache.path(image)}' holds logits of spatial size "
                f"{tuple(logits.shape[1:])} for image '{name}' of {tuple(image.shape[1:])}: the entry is stale or "
                "corrupt; delete it and it is refilled."
            )
        d[self.output_key] = logits
        for name in self.outputs[1:]:
            if not torch.is_tensor(entry.get(name)):
                raise DataError(
                    f"teacher-cache entry '{self.cache.path(image)}' holds no '{name}': it was filled for another "
                    "method; fill the cache again with this output (teacher_mode 'cache' does so at start)."
                )
            d[f"teacher_{name}"] = entry[name]
        return d


def teacher_logits_transform(
    mode: str,
    cache_dir: str | Path,
    teacher: nn.Module | None,
    items: list[dict],
    image_size: int | None = None,
    image_key: str = "image",
    outputs: Sequence[str] = ("logits",),
):
    """The transform a student's training pipeline places after loading: ``"cache"`` fills the cache for ``items``
    (teacher forward on misses only; ``outputs`` as in :func:`fill_teacher_cache`) and returns
    :class:`LoadTeacherCached`; ``"online"`` returns a no-op (the trainer runs the teacher every step)."""
    from monai.transforms import Identityd

    if mode == "online" or teacher is None:
        return Identityd(keys=image_key)
    if mode != "cache":
        raise ValueError(f"teacher_mode must be 'online' or 'cache', got '{mode}'.")
    cache = fill_teacher_cache(cache_dir, teacher, items, image_size, image_key, outputs=outputs)
    return LoadTeacherCached(cache, image_key, outputs=outputs)
