"""DDPM batches, seeded DDIM sampling, the transfer-set writer and the PNG grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler
from monai.transforms import LoadImage, ScaleIntensityRange
from PIL import Image

from common.data.datalist import load_datalist
from common.generative.sampling import (
    SeededDiffusionPrepareBatch,
    TransferSetGenerator,
    initial_noise,
    sample,
    save_grid,
    to_intensity,
)


def _tiny_unet(spatial_dims: int = 2) -> DiffusionModelUNet:
    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
    )


def test_initial_noise_depends_on_the_index_only():
    both = initial_noise(0, 4, (1, 8, 8), seed=7)
    assert torch.equal(initial_noise(2, 2, (1, 8, 8), seed=7), both[2:])
    expected = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(7 + 3))
    assert torch.equal(both[3], expected)
    assert not torch.equal(both[0], both[1])


def test_seeded_prepare_batch_repeats_after_reset_and_at_each_epoch():
    prep = SeededDiffusionPrepareBatch(num_train_timesteps=1000, seed=3)
    batch = {"image": torch.zeros(4, 1, 8, 8)}
    images, target, args, kwargs = prep(batch)
    assert torch.equal(target, kwargs["noise"]) and args == ()
    assert kwargs["timesteps"].shape == (4,) and 0 <= int(kwargs["timesteps"].min()) < 1000
    _, target2, _, kwargs2 = prep(batch)
    assert not torch.equal(target, target2)  # the generator moves on within an epoch

    engine = Engine(lambda e, b: None)
    prep.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(prep(batch)[3]["timesteps"].clone()))
    engine.run([0], max_epochs=2)
    assert torch.equal(seen[0], kwargs["timesteps"]) and torch.equal(seen[1], kwargs["timesteps"])


def test_ddim_sampling_is_deterministic_and_bounded():
    net = _tiny_unet()
    sched = DDIMScheduler(num_train_timesteps=1000)
    noise = initial_noise(0, 2, (1, 16, 16), seed=0)
    a = sample(net, sched, noise, num_inference_steps=3)
    b = sample(net, sched, noise, num_inference_steps=3)
    assert a.shape == noise.shape and torch.equal(a, b)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert net.training, "sample() restores the network's mode"


def test_to_intensity_inverts_the_training_scaling():
    x = torch.rand(2, 1, 4, 4) * 400 - 100
    scaled = ScaleIntensityRange(a_min=-100, a_max=300, b_min=-1, b_max=1)(x)
    assert torch.allclose(to_intensity(torch.as_tensor(scaled), (-100, 300)), x, atol=1e-4)


def test_save_grid_layout_and_values(tmp_path):
    images = torch.zeros(5, 1, 8, 6)
    images[1] = 1.0
    images[4] = 0.5
    path = save_grid(images, tmp_path / "g.png")
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (2 * (8 + 2) + 2, 3 * (6 + 2) + 2)  # 5 images: 3 columns, 2 rows, 2-px gaps
    assert sheet[2:10, 10:16].min() == 255  # image 1: row 0, column 1
    assert set(np.unique(sheet[12:20, 10:16])) == {128}  # image 4: row 1, column 1
    assert sheet[12:20, 18:24].max() == 0  # empty sixth cell
    volume = torch.zeros(2, 1, 4, 4, 6)
    volume[..., 3] = 1.0  # save_grid shows the middle slice of the last axis
    assert np.asarray(Image.open(save_grid(volume, tmp_path / "v.png")))[2:6, 2:6].min() == 255


def _generator(out, **kw) -> TransferSetGenerator:
    args = dict(
        network=_tiny_unet(),
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        output_dir=out,
        num_samples=5,
        image_shape=(16, 16),
        num_inference_steps=2,
        batch_size=2,
        seed=1,
        intensity_range=(-100.0, 300.0),
        progress=False,
    )
    args.update(kw)
    return TransferSetGenerator(**args)


def _read(out, i: int) -> np.ndarray:
    return np.asarray(nib.load(out / "images" / f"synth_{i:05d}.nii.gz").dataobj)


def test_transfer_set_is_a_readable_dataset_and_seeded(tmp_path):
    gen = _generator(tmp_path / "a")
    datalist = gen.run()
    assert json.loads(datalist.read_text())["training"][0] == {"image": "images/synth_00000.nii.gz"}
    items = load_datalist(tmp_path / "a", "training")
    assert len(items) == 5
    img = LoadImage(image_only=True, ensure_channel_first=True)(items[0]["image"])
    assert tuple(img.shape) == (1, 16, 16)
    assert -100.0 <= float(img.min()) and float(img.max()) <= 300.0  # written in the data's intensity range
    assert np.asarray(Image.open(tmp_path / "a" / "samples.png")).ndim == 2

    # Same seed, other batch size: the same images (each image's noise depends on its index only).
    _generator(tmp_path / "b", batch_size=3).run()
    for i in range(5):
        np.testing.assert_allclose(_read(tmp_path / "b", i), _read(tmp_path / "a", i), atol=1e-3)
    _generator(tmp_path / "c", seed=2).run()
    assert not np.allclose(_read(tmp_path / "c", 0), _read(tmp_path / "a", 0), atol=1e-3)


def test_rerun_samples_only_what_is_missing_and_redoes_changed_settings(tmp_path):
    out = tmp_path / "set"
    _generator(out).run()
    (out / "images" / "synth_00003.nii.gz").unlink()
    before = {i: (out / "images" / f"synth_{i:05d}.nii.gz").stat().st_mtime_ns for i in (0, 1, 2, 4)}
    _generator(out).run()
    assert (out / "images" / "synth_00003.nii.gz").is_file()
    assert all((out / "images" / f"synth_{i:05d}.nii.gz").stat().st_mtime_ns == t for i, t in before.items())

    old = _read(out, 0)
    _generator(out, seed=5).run()  # other settings: nothing of the old set is kept
    assert not np.allclose(_read(out, 0), old, atol=1e-3)
    assert json.loads((out / "generation.json").read_text())["settings"]["seed"] == 5


def test_generator_refuses_an_empty_set(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        _generator(tmp_path, num_samples=0)
