"""NonFiniteLossGuard: a NaN/Inf loss stops training before the optimiser step, names the term, keeps last.pt."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.engines import SupervisedTrainer
from monai.transforms import LoadImaged
from torch import nn

from common.data.synthetic import make_synthetic_dataset
from common.engines.distillation import DistillationTrainer, LossTerm, Stage
from common.errors import NonFiniteLossError
from common.handlers.nan_guard import NonFiniteLossGuard
from common.handlers.resume import ResumableCheckpoint
from common.losses.segmentation import dice_ce_loss


class GoesBadAt(nn.Module):
    """A loss term equal to the mean logit, multiplied by ``bad`` from its ``at``-th call on."""

    def __init__(self, at: int, bad: float = float("nan")) -> None:
        super().__init__()
        self.at, self.bad, self.calls = at, bad, 0

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return logits.mean().abs() * (self.bad if self.calls >= self.at else 1.0)


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("nan") / "ds", num_items=(4, 1, 1), size=16)
    items = load_decathlon_datalist(str(root / "datalist.json"), data_list_key="training")
    return DataLoader(Dataset(items, LoadImaged(["image", "label"], ensure_channel_first=True)), batch_size=2)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))


def _distiller(loader, net, terms, gt_weight, handlers):
    return DistillationTrainer(
        device="cpu",
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=dice_ce_loss(3),
        stages=[Stage("s", 2, terms, gt_weight=gt_weight)],
        train_handlers=handlers,
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_term_stops_before_the_step_and_keeps_the_last_checkpoint(loader, tmp_path, bad):
    net = _net()
    terms = {"kd": LossTerm(GoesBadAt(3, bad), 0.5, ("student_logits", "label"))}
    saver = ResumableCheckpoint(tmp_path, {"model": net}, save_interval=1)
    trainer = _distiller(loader, net, terms, 1.0, [saver, NonFiniteLossGuard()])
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: weights.append(copy.deepcopy(net.state_dict())))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert f"loss term 'kd' is {bad} at epoch 2, iteration 3 (batch: image_000.nii.gz, image_001.nii.gz)" in message
    assert "training stopped before the optimiser step" in message and "gt=" in message
    assert f"last good checkpoint is '{tmp_path / 'last.pt'}' (iteration 2)" in message
    assert len(weights) == 2  # iteration 3 never completed ...
    assert all(torch.equal(v, weights[-1][k]) for k, v in net.state_dict().items())  # ... nor changed the weights
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2
    assert all(torch.equal(v, last["model"][k]) for k, v in weights[-1].items())


def test_bad_total_with_finite_terms_and_no_checkpoint_yet(loader):
    net = _net()
    terms = {"kd": LossTerm(GoesBadAt(99), float("nan"), ("student_logits", "label"))}
    with pytest.raises(NonFiniteLossError, match=r"the total loss is nan though every term is finite \(gt=.*kd=.*"
                       r"check the term weights.*No checkpoint had been written yet"):  # fmt: skip
        _distiller(loader, net, terms, 1.0, [NonFiniteLossGuard()]).run()


def test_plain_supervised_trainer(loader):
    net = _net()
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda pred, label: pred.mean() * float("inf"),
        train_handlers=[NonFiniteLossGuard()],
    )
    with pytest.raises(NonFiniteLossError, match=r"^the loss is (-)?inf at epoch 1, iteration 1"):
        trainer.run()


def test_finite_losses_pass(loader):
    net = _net()
    terms = {"kd": LossTerm(GoesBadAt(99), 0.5, ("student_logits", "label"))}
    trainer = _distiller(loader, net, terms, 1.0, [NonFiniteLossGuard()])
    trainer.run()
    assert trainer.state.iteration == 4
