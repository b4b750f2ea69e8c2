"""The distillation engine: one ``SupervisedTrainer`` subclass whose iteration adds named distillation terms.

Data flows one way: batch → frozen teacher (online, or its cached logits carried in the batch) and student →
named loss terms → weighted sum → backward. Each term is a :class:`LossTerm` (a loss module, a weight and the
names of the tensors it takes), so a method is configured, not coded (torchdistill style), and every term is
logged per iteration (``engine.state.output["term_<name>"]``, read by :func:`loss_terms`) and as running
epoch means in ``engine.state.metrics["train_<name>"]``.

Training may run in stages (IAD: knowledge infusion, then knowledge assimilation from the stage-1 student):
each :class:`Stage` has its epochs, terms and ground-truth weight; ``DistillationEvents.STAGE_STARTED`` fires
when a stage begins so handlers can react. A term's weight may follow a schedule over the stage's epochs (a callable
``weight(epoch, epochs)``, e.g. ReCo-KD's λ warm-up); its current value is in ``engine.state.metrics["weight_<name>"]``.

Tensors a term can take (``INPUT_NAMES``): the student's and teacher's logits; ``student_embedding``,
``student_features`` / ``teacher_features`` and ``student_deep_supervision``, read from the networks'
``forward_features`` output (``embedding``, ``features``, ``deep_supervision``) only when a term of the stage asks for them; the teacher's ``embedding``; and
the ``label``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from ignite.engine import Engine, EventEnum, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import from_engine
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from common.errors import InputError

__all__ = [
    "LossTerm",
    "Stage",
    "DistillationEvents",
    "DistillationTrainer",
    "collect_loss_modules",
    "stage_boundaries",
    "total_iterations",
    "iteration_loss",
    "loss_terms",
    "TEACHER_LOGITS_KEY",
]

TEACHER_LOGITS_KEY = "teacher_logits"
LABELLED_KEY = "labelled"  # (B,) 1 for a labelled image, 0 for an unlabelled one with a pseudo-label
TERM_PREFIX = "term_"  # flat output keys (MONAI's decollation would mangle a nested dict)
INPUT_NAMES = (
    "student_logits",
    "student_embedding",
    "student_features",
    "student_deep_supervision",
    "teacher_logits",
    "teacher_embedding",
    "teacher_features",
    "label",
)


class DistillationEvents(EventEnum):
    STAGE_STARTED = "stage_started"


@dataclass
class LossTerm:
    """``weight · loss(*[tensors[name] for name in inputs])``; a loss returning a dict contributes each entry
    (named ``<term>_<key>``) with the same weight. ``weight`` is a number, or a callable ``(epoch, epochs) -> float``
    evaluated each iteration with the 1-based epoch within the stage and the stage's number of epochs."""

    loss: nn.Module | Callable
    weight: float | Callable[[int, int], float] = 1.0
    inputs: Sequence[str] = ("student_logits", "teacher_logits")

    def __post_init__(self) -> None:
        unknown = [n for n in self.inputs if n not in INPUT_NAMES]
        if unknown:
            raise ValueError(f"Unknown loss inputs {unknown}; choose from {INPUT_NAMES}.")

    def weight_at(self, epoch: int, epochs: int) -> float:
        """The weight in epoch ``epoch`` (1-based, within the stage) of a stage of ``epochs`` epochs."""
        return float(self.weight(epoch, epochs)) if callable(self.weight) else self.weight


@dataclass
class Stage:
    """A training stage: ``epochs`` epochs of ``gt_weight · L_gt + Σ terms``."""

    name: str
    epochs: int
    terms: Mapping[str, LossTerm] = field(default_factory=dict)
    gt_weight: float = 1.0

    @property
    def needs_teacher(self) -> bool:
        return any(n.startswith("teacher") for t in self.terms.values() for n in t.inputs)


def _as_float(value: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """A tensor, or each tensor of a list (per-stage features), as float32."""
    return value.float() if torch.is_tensor(value) else [v.float() for v in value]


def _as_stage(stage: Stage | Mapping) -> Stage:
    if isinstance(stage, Stage):
        return stage
    stage = dict(stage)
    stage["terms"] = {k: v if isinstance(v, LossTerm) else LossTerm(**v) for k, v in (stage.get("terms") or {}).items()}
    return Stage(**stage)


def collect_loss_modules(stages: Sequence[Stage | Mapping]) -> nn.ModuleDict:
    """All loss modules of all stages in one ModuleDict (``<stage>_<term>``): give its parameters to the optimiser
    and put it in the checkpoint, so trainable projections (e.g. IAD's KAS convolutions) train and are saved."""
    modules = nn.ModuleDict()
    for stage in map(_as_stage, stages):
        for name, term in stage.terms.items():
            if isinstance(term.loss, nn.Module):
                modules[f"{stage.name}_{name}"] = term.loss
    return modules


def _active(stages: Sequence[Stage | Mapping]) -> list[Stage]:
    return [s for s in map(_as_stage, stages) if int(s.epochs) > 0]


def stage_boundaries(stages: Sequence[Stage | Mapping], iters_per_epoch: int) -> list[int]:
    """Iterations at which stages after the first begin (for an lr schedule that restarts with each stage)."""
    bounds, total = [], 0
    for stage in _active(stages)[:-1]:
        total += int(stage.epochs) * iters_per_epoch
        bounds.append(total)
    return bounds


def total_iterations(stages: Sequence[Stage | Mapping], iters_per_epoch: int) -> int:
    """Iterations of the whole run (all stages)."""
    return sum(int(s.epochs) for s in _active(stages)) * iters_per_epoch


def iteration_loss(output: Mapping | Sequence[Mapping]) -> float:
    """The loss of an iteration's output, from its first item when the engine decollated it (MONAI's
    ``from_engine(..., first=True)``, which gives a 1-tuple for a dict and the value for a list)."""
    value = from_engine([Keys.LOSS], first=True)(output)
    loss = value[0] if isinstance(value, tuple) else value
    return float(loss.detach() if torch.is_tensor(loss) else loss)


def loss_terms(output: Mapping | Sequence[Mapping]) -> dict[str, float]:
    """Output transform for Stats/TensorBoard/MLflow handlers: the total loss and every named term (of the first
    item when the engine decollated its output, as MONAI engines do by default)."""
    item = output[0] if isinstance(output, Sequence) else output
    terms = {k[len(TERM_PREFIX) :]: float(v) for k, v in item.items() if k.startswith(TERM_PREFIX)}
    return {"loss": iteration_loss(output), **terms}


class DistillationTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for a student distilled from a frozen teacher.

    Args:
        stages: :class:`Stage` objects or dicts (``name``, ``epochs``, ``terms``, ``gt_weight``); ``max_epochs`` is
            their total.
        teacher: the teacher network (kept in eval mode, run under ``no_grad``); None when no term needs it or when
            every batch carries cached ``teacher_logits`` and no term needs the embedding.
        loss_function: the ground-truth loss L_gt(student logits, label).
        kwargs: the rest of ``SupervisedTrainer``'s arguments (``amp``, ``accumulation_steps``, handlers, ...).

    The student must provide ``forward_features(x) -> {"logits", "features", ...}`` when a term takes
    ``student_features`` or ``student_deep_supervision`` (key ``deep_supervision``); otherwise plain ``forward`` is
    used. The teacher's ``forward_features`` gives ``logits`` and whatever else a term asks for (``embedding``,
    ``features``).
    """

    def __init__(
        self,
        device: str | torch.device,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        stages: Sequence[Stage | Mapping],
        teacher: nn.Module | None = None,
        **kwargs,
    ) -> None:
        self.stages = _active(stages)
        if not self.stages:
            raise ValueError("DistillationTrainer needs at least one stage with epochs > 0.")
        super().__init__(
            device=device,
            max_epochs=sum(int(s.epochs) for s in self.stages),
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.register_events(*DistillationEvents)
        self.teacher = teacher
        self._check_class_counts(network, teacher)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.stage_index = -1
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._select_stage)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._update_term_means)

    def _check_class_counts(self, network: nn.Module, teacher: nn.Module | None) -> None:
        """Refuse, before training, a teacher whose logits have another class count than the student's."""
        uses_logits = any("teacher_logits" in t.inputs for s in self.stages for t in s.terms.values())
        k_teacher, k_student = getattr(teacher, "num_classes", None), getattr(network, "num_classes", None)
        if uses_logits and None not in (k_teacher, k_student) and int(k_teacher) != int(k_student):
            raise InputError(
                f"the teacher outputs {k_teacher} classes and the student {k_student}: teacher and student must "
                "share num_classes (was the teacher's adapter trained for another task?)."
            )

    @staticmethod
    def _check_logits_fit(teacher: torch.Tensor, student: torch.Tensor, cached: bool) -> None:
        """Teacher and student logits must agree in batch size, class count and spatial rank (the losses resize
        spatial sizes); say so clearly instead of failing inside a loss."""
        if teacher.shape[:2] == student.shape[:2] and teacher.ndim == student.ndim:
            return
        source = "cached teacher logits (teacher_mode 'cache')" if cached else "teacher logits"
        raise InputError(
            f"{source} of shape {tuple(teacher.shape)} do not fit the student's logits {tuple(student.shape)}: batch "
            "size, class count (num_classes) and number of spatial dimensions must agree."
        )

    @staticmethod
    def _check_unlabelled(stage: Stage) -> None:
        """A batch without ``label`` is fine only when nothing of the stage needs one."""
        needs = [n for n, t in stage.terms.items() if "label" in t.inputs]
        if stage.gt_weight or needs:
            raise InputError(
                f"the batch has no 'label' but stage '{stage.name}' needs one (gt_weight {stage.gt_weight}"
                + (f", terms {needs}" if needs else "")
                + "): give a labelled datalist, or set gt_weight 0 for distillation on unlabelled images."
            )

    def _update_term_means(self, engine: Engine) -> None:
        """Running epoch means of every term in ``state.metrics`` (``train_<term>``), which the Stats, TensorBoard
        and MLflow handlers log at epoch level with no extra configuration (MONAI's ``--tracking mlflow`` too).

        Hand-rolled rather than ignite ``Average`` metrics: the terms change with the stage and a dict-valued loss
        names its parts only when first called, while an ``Average`` must be attached before its epoch starts and
        raises on an epoch without updates (a term of another stage)."""
        if engine.state.iteration == 1 or (engine.state.iteration - 1) % engine.state.epoch_length == 0:
            for k in self._term_sums:  # a term of the previous stage must not linger
                engine.state.metrics.pop(f"train_{k}", None)
            self._term_sums, self._term_count = {}, 0
        self._term_count += 1
        for k, v in loss_terms(engine.state.output).items():
            self._term_sums[k] = self._term_sums.get(k, 0.0) + v
            engine.state.metrics[f"train_{k}"] = self._term_sums[k] / self._term_count

    def _gt_loss(self, logits: torch.Tensor, targets: torch.Tensor, batchdata: Mapping) -> torch.Tensor:
        """L_gt over the batch, or over its labelled images when the batch mixes in unlabelled ones (``labelled``,
        :class:`common.data.transforms.PseudoLabeld`): their pseudo-labels feed the distillation terms, not L_gt.
        A batch without a labelled image contributes 0 (still attached to the graph)."""
        labelled = batchdata.get(LABELLED_KEY) if isinstance(batchdata, Mapping) else None
        if labelled is None:
            return self.loss_function(logits, targets).mean()
        keep = torch.as_tensor(labelled).to(logits.device).flatten() > 0.5
        if bool(keep.all()):
            return self.loss_function(logits, targets).mean()
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return self.loss_function(logits[keep], targets[keep]).mean()

    @property
    def stage(self) -> Stage:
        return self.stages[max(self.stage_index, 0)]

    def epoch_in_stage(self, epoch: int) -> int:
        """1-based epoch within its stage of the engine's (1-based) epoch ``epoch``."""
        return epoch - sum(int(s.epochs) for s in self.stages[: self.stage_at_epoch(epoch)])

    def stage_at_epoch(self, epoch: int) -> int:
        """Index of the stage that epoch ``epoch`` (1-based) belongs to."""
        end = 0
        for i, stage in enumerate(self.stages):
            end += int(stage.epochs)
            if epoch <= end:
                return i
        return len(self.stages) - 1

    def _select_stage(self, engine: Engine) -> None:
        index = self.stage_at_epoch(engine.state.epoch)
        if index != self.stage_index:
            self.stage_index = index
            self.logger.info(f"Distillation stage '{self.stage.name}' ({index + 1}/{len(self.stages)}) begins.")
            self.fire_event(DistillationEvents.STAGE_STARTED)

    def _teacher_outputs(self, inputs: torch.Tensor, batchdata: Mapping) -> dict[str, torch.Tensor]:
        """Cached logits from the batch when present (and no term needs the embedding), else a teacher forward."""
        names = {n for t in self.stage.terms.values() for n in t.inputs if n.startswith("teacher")}
        if not names:
            return {}
        cached = (
            {n: batchdata[n] for n in names if batchdata.get(n) is not None} if isinstance(batchdata, Mapping) else {}
        )
        if cached and set(cached) == names:
            return {n: torch.as_tensor(v).to(inputs.device, non_blocking=self.non_blocking) for n, v in cached.items()}
        if self.teacher is None:
            raise RuntimeError(
                f"Stage '{self.stage.name}' needs {sorted(names)} but there is no teacher and the batch carries "
                f"only {sorted(cached) or 'no'} cached teacher outputs."
            )
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher.forward_features(inputs)
        return {f"teacher_{k}": _as_float(out[k]) for k in {"logits"} | {n[len("teacher_") :] for n in names}}

    def _student_outputs(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        names = {n for t in self.stage.terms.values() for n in t.inputs if n.startswith("student_")}
        names.discard("student_logits")
        if names:
            out = self.network.forward_features(inputs)
            return {"student_logits": out["logits"], **{n: out[n[len("student_") :]] for n in names}}
        return {"student_logits": self.inferer(inputs, self.network)}

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        stage = engine.stage
        epoch, epochs = engine.epoch_in_stage(engine.state.epoch), int(stage.epochs)
        weights = {name: term.weight_at(epoch, epochs) for name, term in stage.terms.items()}
        for name, term in stage.terms.items():
            if callable(term.weight):
                engine.state.metrics[f"weight_{name}"] = weights[name]

        def compute_loss() -> None:
            tensors = {
                "label": targets,
                **engine._teacher_outputs(inputs, batchdata),
                **engine._student_outputs(inputs),
            }
            if "teacher_logits" in tensors:
                cached = isinstance(batchdata, Mapping) and batchdata.get(TEACHER_LOGITS_KEY) is not None
                engine._check_logits_fit(tensors["teacher_logits"], tensors["student_logits"], cached)
            engine.state.output[Keys.PRED] = tensors["student_logits"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if targets is None:  # unlabelled data (e.g. a transfer set): only the distillation terms
                engine._check_unlabelled(stage)
                terms, weighted = {}, 0.0
            else:
                terms = {"gt": engine._gt_loss(tensors["student_logits"], targets, batchdata)}
                weighted = stage.gt_weight * terms["gt"]
            for name, term in stage.terms.items():
                value = term.loss(*[tensors[n] for n in term.inputs])
                parts = value if isinstance(value, Mapping) else {name: value}
                for key, part in parts.items():
                    terms[key if key == name else f"{name}_{key}"] = part
                    weighted = weighted + weights[name] * part
            engine.state.output[Keys.LOSS] = weighted
            engine.state.output.update({f"{TERM_PREFIX}{k}": float(v.detach()) for k, v in terms.items()})
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        acc = engine.accumulation_steps
        local_iter = (engine.state.iteration - 1) % (engine.state.epoch_length or engine.state.iteration)
        zero_grad = acc <= 1 or local_iter % acc == 0
        step = acc <= 1 or (local_iter + 1) % acc == 0 or (local_iter + 1) == engine.state.epoch_length

        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                compute_loss()
            loss = engine.state.output[Keys.LOSS]
            engine.scaler.scale(loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            compute_loss()
            loss = engine.state.output[Keys.LOSS]
            (loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
