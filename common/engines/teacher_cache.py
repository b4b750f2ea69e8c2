"""A disk cache of teacher outputs, so students distil without running the teacher every step.

Two named steps, both in the student's config:

- ``fill_teacher_cache`` (run from ``initialize``) runs the frozen teacher once over the training images, each
  prepared by the training preprocessing up to its first random transform (loading, normalisation), and stores the
  outputs it lacks;
- :class:`LoadTeacherCached`, a plain loading transform of that preprocessing, adds them to each item.

An entry is keyed by the teacher's fingerprint (a hash of its merged weights, its input size and the size the logits
are stored at) and by the image's content, so a changed teacher checkpoint or a changed image never serves a stale
entry: it simply misses. Entries are plain tensor dicts written atomically and read with
``torch.load(weights_only=True)``. ``mode="online"`` turns both steps off (the trainer then runs the teacher on every
batch).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, LoadImage, Randomizable
from torch import nn

from common.checkpoints import atomic_save
from common.errors import DataError, InputError
from common.networks.lora import merged_state_dict

__all__ = ["teacher_fingerprint", "TeacherCache", "fill_teacher_cache", "LoadTeacherCached", "TEACHER_MODES"]

logger = logging.getLogger(__name__)
TEACHER_MODES = ("cache", "online")


def teacher_fingerprint(
    network: nn.Module, image_size: int | None = None, output_size: Sequence[int] | None = None
) -> str:
    """sha256 of the teacher's merged weights (so the adapter form and the merged form agree), its input size and the
    spatial size its logits are stored at."""
    h = hashlib.sha256(f"image_size={image_size}".encode())
    if output_size is not None:
        h.update(f"output_size={tuple(int(s) for s in output_size)}".encode())
    for name, tensor in sorted(merged_state_dict(network).items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:24]


def _output_names(outputs: Sequence[str] | str) -> tuple[str, ...]:
    """``logits`` first, then the other requested outputs, without repeats."""
    names = [outputs] if isinstance(outputs, str) else list(outputs)
    return tuple(dict.fromkeys(["logits", *names]))


def _check_mode(mode: str) -> str:
    if mode not in TEACHER_MODES:
        raise InputError(f"teacher_mode must be one of {TEACHER_MODES}, got '{mode}'.")
    return mode


class TeacherCache:
    """``cache_dir/<fingerprint>/<image hash>.pt`` holding the teacher outputs of one image.

    Args:
        cache_dir: the cache's folder.
        fingerprint: the folder name; None computes it from ``teacher`` when first needed.
        teacher: the frozen teacher that fills the cache (``forward_features`` gives ``logits`` and the other
            ``outputs``).
        image_size: the teacher's input size (part of the fingerprint).
        output_size: spatial size the logits are stored at (the student's input size; an int for a square);
            None keeps the image's.
        outputs: what an entry holds: ``logits`` always, plus e.g. ``embedding`` for feature distillation.

    With neither ``fingerprint`` nor ``teacher`` (a student trained alone: ``teacher`` null) the cache is off:
    :func:`fill_teacher_cache` and :class:`LoadTeacherCached` do nothing.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        fingerprint: str | None = None,
        teacher: nn.Module | None = None,
        image_size: int | None = None,
        output_size: int | Sequence[int] | None = None,
        outputs: Sequence[str] = ("logits",),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.teacher, self.image_size = teacher, image_size
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = None if output_size is None else tuple(int(s) for s in output_size)
        self.outputs = _output_names(outputs)
        self._fingerprint = fingerprint

    @property
    def enabled(self) -> bool:
        """False for a cache with neither teacher nor fingerprint (no teacher: nothing to cache)."""
        return self._fingerprint is not None or self.teacher is not None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = teacher_fingerprint(self.teacher, self.image_size, self.output_size)
        return self._fingerprint

    @property
    def root(self) -> Path:
        return self.cache_dir / self.fingerprint

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

    def has(self, image: torch.Tensor) -> bool:
        """Whether ``image`` has an entry with every output (one hash, and one read when more than logits)."""
        if self.outputs == ("logits",):
            return self.path(image).is_file()
        entry = self.load(image)
        return entry is not None and all(torch.is_tensor(entry.get(k)) for k in self.outputs)

    def compute(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's outputs for one image (C, *spatial); logits resized to ``output_size`` when set."""
        device = next(self.teacher.parameters()).device
        self.teacher.eval()
        with torch.no_grad():
            x = image[None].to(device)
            out = {"logits": self.teacher(x)} if self.outputs == ("logits",) else self.teacher.forward_features(x)
        result = {k: out[k][0].float() for k in self.outputs}
        if self.output_size is not None and tuple(result["logits"].shape[1:]) != self.output_size:
            logits = result["logits"][None]
            result["logits"] = F.interpolate(logits, size=self.output_size, mode="bilinear", align_corners=False)[0]
        return result


def _loading_part(transform: Callable | None) -> Callable:
    """The deterministic head of a preprocessing ``Compose``: up to its first :class:`LoadTeacherCached` or random
    transform (what the cached images look like when :class:`LoadTeacherCached` sees them)."""
    if transform is None:
        loader = LoadImage(image_only=True, ensure_channel_first=True)
        return lambda item: {"image": loader(item["image"])}
    if not isinstance(transform, Compose):
        return transform
    end = transform.get_index_of_first(lambda t: isinstance(t, (LoadTeacherCached, Randomizable)))
    return lambda item: transform(item, end=end)


def fill_teacher_cache(
    cache: TeacherCache,
    items: list[dict],
    transform: Callable | None = None,
    image_key: str = "image",
    mode: str = "cache",
) -> TeacherCache:
    """Run the teacher once on every image of ``items`` that has no complete entry in ``cache`` yet, and return the
    cache. Each item is prepared by ``transform`` (the training preprocessing, applied up to its first
    :class:`LoadTeacherCached` or random transform; None: just loaded with a channel axis), so the entries are keyed
    exactly as :class:`LoadTeacherCached` will look them up. Progress is shown. ``mode="online"``: nothing to do."""
    from tqdm import tqdm

    if _check_mode(mode) == "online" or not cache.enabled:
        return cache
    if cache.teacher is None:
        raise ValueError("fill_teacher_cache needs a TeacherCache built with its teacher.")
    prepare = _loading_part(transform)
    written = 0
    for item in tqdm(items, desc="teacher cache", leave=False):
        image = torch.as_tensor(prepare(dict(item))[image_key]).float().as_subclass(torch.Tensor)
        if cache.has(image):
            continue
        cache.save(image, cache.compute(image))
        written += 1
    logger.info("Teacher cache %s: %d entries written, %d reused.", cache.root, written, len(items) - written)
    return cache


class LoadTeacherCached:
    """Dictionary transform: add ``teacher_logits`` (K, *spatial) from a :class:`TeacherCache` for ``image``, and
    ``teacher_<name>`` for each other output of the cache (e.g. ``teacher_embedding``).

    Place it after the deterministic loading transforms (load, normalise), before any spatial augmentation, and list
    ``teacher_logits`` in the spatial transforms' keys so the logits move with the image (an embedding is coarse: use
    it without spatial augmentation). A miss is a stale cache and stops with a clear error. ``mode="online"``:
    a no-op (the trainer runs the teacher).
    """

    def __init__(
        self, cache: TeacherCache, image_key: str = "image", output_key: str = "teacher_logits", mode: str = "cache"
    ) -> None:
        self.cache, self.image_key, self.output_key = cache, image_key, output_key
        self.mode = _check_mode(mode)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        if self.mode == "online" or not self.cache.enabled:
            return d
        image = d[self.image_key]
        name = getattr(image, "meta", {}).get("filename_or_obj", "?")
        entry = self.cache.load(image)
        if entry is None:
            raise DataError(
                f"no teacher-cache entry for image '{name}' in {self.cache.root}: the cache is stale (the image or "
                "the teacher changed). Fill it again (the config's fill_teacher_cache, run at initialize) or use "
                "teacher_mode 'online'."
            )
        logits = entry["logits"]
        expected = self.cache.output_size or tuple(image.shape[1:])
        if tuple(logits.shape[1:]) != tuple(expected):
            raise DataError(
                f"teacher-cache entry '{self.cache.path(image)}' holds logits of spatial size "
                f"{tuple(logits.shape[1:])} for image '{name}', expected {tuple(expected)}: the entry is stale or "
                "corrupt; delete it and it is refilled."
            )
        d[self.output_key] = logits
        for output in self.cache.outputs[1:]:
            if not torch.is_tensor(entry.get(output)):
                raise DataError(
                    f"teacher-cache entry '{self.cache.path(image)}' holds no '{output}': it was filled for another "
                    "method; fill the cache again with this output (the config's fill_teacher_cache)."
                )
            d[f"teacher_{output}"] = entry[output]
        return d
