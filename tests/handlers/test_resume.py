"""ResumableCheckpoint: atomic last checkpoint, exact mid-epoch resume, clear refusals, weights-only reading."""

from __future__ import annotations

import pickle

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver, LrScheduleHandler
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from torch import nn

from common.checkpoints import atomic_save
from common.errors import CheckpointError
from common.handlers.resume import ResumableCheckpoint, _resume_path, module_state, restore_key_metric

BATCHES_PER_EPOCH = 3


class Crash(Exception):
    """Stands in for a process dying mid-run (the bundle test uses a real SIGKILL)."""


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))
    net.append(nn.Conv2d(4, 2, 1))
    net[0].bias.requires_grad_(False)  # a frozen parameter: left out of the checkpoint, rebuilt at start
    return net


def _trainer(save_dir, resume=False, crash_at=None, seed: int | None = 0, epochs: int = 3, num_workers: int = 0):
    """A tiny SupervisedTrainer with shuffling, random transforms, dropout, momentum and an lr schedule: everything
    whose state a resumed run must get back."""
    data = [{"image": torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i)), "label": torch.ones(1, 8, 8)}
            for i in range(2 * BATCHES_PER_EPOCH)]  # fmt: skip
    transform = Compose([RandGaussianNoised("image", prob=1.0, std=0.1), RandFlipd(["image", "label"], prob=0.5)])
    loader = DataLoader(Dataset(data, transform), batch_size=2, shuffle=True, num_workers=num_workers)
    net = _net()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    handlers = [LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)]
    handlers.append(
        ResumableCheckpoint(
            save_dir, {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler}, 1, resume=resume, seed=seed
        )
    )
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=optimizer,
        loss_function=lambda pred, label: nn.functional.cross_entropy(pred, label[:, 0].long()),
        train_handlers=handlers,
    )
    if crash_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED(once=crash_at))
        def _crash(_):
            raise Crash()

    return trainer, net, optimizer


def _final_state(net, optimizer) -> dict[str, torch.Tensor]:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        state.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return state


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_gives_the_uninterrupted_weights(tmp_path, workers):
    trainer, net, opt = _trainer(tmp_path / "straight", num_workers=workers)
    trainer.run()
    expected = _final_state(net, opt)

    crashed, _, _ = _trainer(tmp_path / "crashed", crash_at=5, num_workers=workers)
    with pytest.raises(Crash):
        crashed.run()
    saved = torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)
    # the crash handler runs before the saver (registered at start, after every handler), so iteration 4 was kept
    assert saved["trainer"]["iteration"] == 4 and 4 % BATCHES_PER_EPOCH != 0  # mid-epoch
    assert "0.bias" not in saved["model"] and "1.running_mean" in saved["model"]  # frozen out, buffers in

    resumed, net2, opt2 = _trainer(tmp_path / "crashed", resume=True, num_workers=workers)
    resumed.run()
    assert resumed.state.iteration == 3 * BATCHES_PER_EPOCH
    got = _final_state(net2, opt2)
    assert got.keys() == expected.keys()
    for k, v in expected.items():  # bit-identical: same kernels, same order of batches and random draws
        assert torch.equal(v, got[k]), k
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_without_reseeding_a_resumed_run_differs(tmp_path):
    """The check above could fail: without per-epoch/iteration seeds the resumed run draws other batches."""
    trainer, net, opt = _trainer(tmp_path / "straight", seed=None)
    trainer.run()
    crashed, _, _ = _trainer(tmp_path / "crashed", crash_at=5, seed=None)
    with pytest.raises(Crash):
        crashed.run()
    resumed, net2, opt2 = _trainer(tmp_path / "crashed", resume=True, seed=None)
    resumed.run()
    assert resumed.state.iteration == 3 * BATCHES_PER_EPOCH
    assert not all(torch.equal(v, net2.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer, _, _ = _trainer(tmp_path, crash_at=2)
    with pytest.raises(Crash):
        trainer.run()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["trainer"]["iteration"] == 1

    def dies_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError):
        atomic_save({"x": torch.zeros(1)}, tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["trainer"]["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_resume_refuses_what_does_not_fit(tmp_path):
    with pytest.raises(CheckpointError, match=r"--resume true needs the last checkpoint '.*last.pt', which does not"):
        _trainer(tmp_path / "nothing", resume=True)

    trainer, _, _ = _trainer(tmp_path / "run", epochs=1)
    trainer.run()
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)

    other = dict(ckpt, trainer=dict(ckpt["trainer"], epoch_length=5))
    torch.save(other, tmp_path / "other_length.pt")
    with pytest.raises(CheckpointError, match="written with 5 iterations per epoch, this run has 3"):
        _trainer(tmp_path / "run", resume=str(tmp_path / "other_length.pt"))[0].run()

    del ckpt["lr_scheduler"]
    torch.save(ckpt, tmp_path / "no_scheduler.pt")
    with pytest.raises(CheckpointError, match=r"has no \['lr_scheduler'\].*another configuration"):
        _trainer(tmp_path / "run", resume=str(tmp_path / "no_scheduler.pt"))[0].run()

    ckpt = torch.load(last, weights_only=True)
    ckpt["model"]["4.weight"] = torch.zeros(3, 4, 1, 1)
    torch.save(ckpt, tmp_path / "other_net.pt")
    with pytest.raises(CheckpointError, match=r"entry 'model' .* does not fit this network: .*4.weight \(3, 4, 1, 1\)"):
        _trainer(tmp_path / "run", resume=str(tmp_path / "other_net.pt"))[0].run()


class _Payload:
    """Anything pickled: loading it would run code (here it would only build this object)."""


def test_resume_never_unpickles(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"trainer": {"iteration": 1}, "model": _Payload()}, f)
    torch.save({"trainer": {"iteration": 1}, "model": _Payload()}, tmp_path / "evil_torch.pt")
    for name in ("evil.pt", "evil_torch.pt"):
        with pytest.raises(CheckpointError, match=f"cannot read resume checkpoint '.*{name}'"):
            _trainer(tmp_path, resume=str(tmp_path / name))[0].run()


def test_resume_words_and_paths(tmp_path):
    default = tmp_path / "last.pt"
    for word in (True, "true", "True", "yes", "1"):
        assert _resume_path(word, default) == default
    for word in (False, None, "false", "no", "0", ""):
        assert _resume_path(word, default) is None
    assert _resume_path("runs/a/last.pt", default).as_posix() == "runs/a/last.pt"


def test_best_model_bookkeeping_survives_a_resume(tmp_path):
    """A resumed run must compare its validations with the best one before the crash, not overwrite it."""

    def saver():
        return CheckpointSaver(str(tmp_path), {"model": _net()}, save_key_metric=True, key_metric_name="dice",
                               key_metric_filename="model.pt")  # fmt: skip

    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.metrics = {"dice": 0.8}
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.8, 1  # as a MONAI evaluator records it
    before_crash = saver()
    before_crash.metrics_completed(evaluator)  # the best model (dice 0.8)
    assert (tmp_path / "model.pt").is_file()
    (tmp_path / "model.pt").write_bytes(b"sentinel")  # to see whether a later validation replaces it

    resumed = Engine(lambda engine, batch: None)
    resumed.state.best_metric, resumed.state.best_metric_epoch = -1, -1  # a fresh evaluator
    after_resume = saver()
    restore_key_metric(after_resume, resumed, {"value": 0.8, "epoch": 1}, "model.pt")
    assert (resumed.state.best_metric, resumed.state.best_metric_epoch) == (0.8, 1)
    resumed.state.metrics = {"dice": 0.5}
    after_resume.metrics_completed(resumed)  # worse than the best before the crash: no new best model
    assert (tmp_path / "model.pt").read_bytes() == b"sentinel"
    resumed.state.metrics = {"dice": 0.9}
    after_resume.metrics_completed(resumed)
    assert (tmp_path / "model.pt").read_bytes() != b"sentinel"
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["model.pt"]  # the old best file was replaced


def test_module_state_leaves_out_frozen_parameters_only():
    net = _net()
    state = module_state(net)
    assert "0.bias" not in state and {"0.weight", "1.running_var", "1.num_batches_tracked"} <= set(state)
