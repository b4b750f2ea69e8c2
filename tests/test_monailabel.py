"""MONAI Label loads an exported student bundle from an app's model folder with its own ``BundleInferTask`` and
segments a NIfTI volume with it.

monailabel is installed without its dependencies (``pip install --no-deps monailabel``, plus the few modules this
path imports: see requirements.txt). It imports ``torchvision.utils`` at module level for one debugging transform
(``DumpImagePrediction2Dd``) that bundle inference does not use; torchvision would pull a CUDA build of torch here,
so when it is absent a stand-in that refuses to be used is registered while monailabel is imported, and removed
right after (so no other library takes torchvision for installed).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps monailabel)")


def _import_bundle_infer_task():
    """``monailabel.tasks.infer.bundle.BundleInferTask``; without torchvision, imported with a stand-in
    ``torchvision.utils`` whose two functions raise (removed from ``sys.modules`` again afterwards)."""
    if importlib.util.find_spec("torchvision") is not None:
        from monailabel.tasks.infer.bundle import BundleInferTask

        return BundleInferTask

    def _absent(*args, **kwargs):
        raise ImportError("torchvision is not installed: DumpImagePrediction2Dd is unavailable")

    utils = types.ModuleType("torchvision.utils")
    utils.make_grid, utils.save_image = _absent, _absent
    package = types.ModuleType("torchvision")
    package.utils = utils
    sys.modules.update({"torchvision": package, "torchvision.utils": utils})
    try:
        from monailabel.tasks.infer.bundle import BundleInferTask
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.utils"]
    return BundleInferTask


def _export_module():
    spec = importlib.util.spec_from_file_location("export_bundle", REPO / "scripts" / "export_bundle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_bundle"] = module
    spec.loader.exec_module(module)
    return module


def _ct_dataset(root: Path, spacing: list[float], dim: int) -> Path:
    """A dataset folder holding only the ``dataset.json`` of a liver CT task (labels liver, tumour; HU window)."""
    from common.data.dataset_info import DatasetInfo, write_dataset_info

    info = DatasetInfo(name="ct", dim=dim, channel_names=["CT"], labels={"0": "background", "1": "liver", "2": "tumour"},
                       normalisation={"method": "window", "range": [-125.0, 275.0]}, modality="CT", spacing=spacing)  # fmt: skip
    write_dataset_info(root, info)
    return root


def test_bundle_infer_task_segments_a_nifti_volume(tmp_path):
    """The 3D student (recokd_student), exported and put in ``<app>/model/``: MONAI Label reads its labels and
    dimension from the metadata, runs inference.json's transforms and sliding window, and writes a label volume in
    the image's space that equals the network's own argmax."""
    from monai.inferers import SlidingWindowInferer

    from common.networks.dynunet import build_dynunet

    torch.manual_seed(0)
    network = build_dynunet(num_classes=3, in_channels=1, filters=[32, 64, 128, 256], width_divisor=4).eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    app_models = tmp_path / "app" / "model"
    data = _ct_dataset(tmp_path / "data", spacing=[0.8, 0.8, 2.5], dim=3)  # the training data's description
    bundle = _export_module().export_bundle(REPO / "bundles" / "recokd_student", app_models / "recokd_student",
                                            ckpt=tmp_path / "model.pt", dataset_dir=data)  # fmt: skip

    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 40.0, (48, 40, 20)).astype(np.float32)  # HU
    volume[10:34, 8:30, 4:16] += 120.0  # a brighter organ-like block, so the prediction is not uniform
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "volume.nii.gz")

    BundleInferTask = _import_bundle_infer_task()
    task = BundleInferTask(str(bundle), conf={"preload": "false"})
    assert task.is_valid()
    assert task.labels == {"liver": 1, "tumour": 2} and task.dimension == 3
    assert task.info()["version"] == json.loads((bundle / "configs" / "metadata.json").read_text())["version"]

    label_path, _ = task({"image": str(tmp_path / "volume.nii.gz"), "device": "cpu", "result_extension": ".nii.gz"})
    label = nib.load(label_path)
    predicted = np.asarray(label.dataobj)
    assert predicted.shape == volume.shape
    assert np.allclose(label.affine, affine, atol=1e-5)

    # the same network, run directly as inference.json describes it (HU window, 64x64x24 window, argmax)
    image = torch.from_numpy(np.clip((volume + 125.0) / 400.0, 0.0, 1.0))[None, None]
    inferer = SlidingWindowInferer(
        (64, 64, 24), sw_batch_size=4, overlap=0.25, mode="gaussian", padding_mode="replicate"
    )
    with torch.no_grad():
        expected = inferer(image, network).argmax(1)[0].numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(predicted, expected)


def test_bundle_infer_task_segments_a_volume_with_a_2d_student(tmp_path):
    """The 2D EfficientNet-B1 student (iad_student), exported and put in ``<app>/model/``: MONAI Label runs its
    inference.json on a NIfTI CT volume, slice by slice, and writes a 3D label volume in the image's space that
    equals the network's own slice-wise argmax at the training size."""
    import torch.nn.functional as F

    from common.networks.students import EfficientUNetStudent

    torch.manual_seed(0)
    network = EfficientUNetStudent(num_classes=3, in_channels=1).eval()
    with torch.no_grad():  # a random head's bias decides every pixel alike: sharpen it so the labels vary
        network.segmentation_head[0].bias.zero_()
        network.segmentation_head[0].weight.mul_(100)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    data = _ct_dataset(tmp_path / "data", spacing=[0.8, 0.8], dim=2)
    bundle = _export_module().export_bundle(REPO / "bundles" / "iad_student", tmp_path / "app" / "model" / "iad",
                                            ckpt=tmp_path / "model.pt", dataset_dir=data)  # fmt: skip
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 40.0, (96, 80, 5)).astype(np.float32)
    volume[20:70, 10:50, :] += 150.0
    affine = np.array([[0, -0.8, 0, 10.0], [-0.8, 0, 0, 5.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "volume.nii.gz")

    task = _import_bundle_infer_task()(str(bundle), conf={"preload": "false"})
    assert task.is_valid() and task.labels == {"liver": 1, "tumour": 2}
    label_path, _ = task({"image": str(tmp_path / "volume.nii.gz"), "device": "cpu", "result_extension": ".nii.gz"})
    label = nib.load(label_path)
    predicted = np.asarray(label.dataobj)
    assert predicted.shape == volume.shape
    assert np.allclose(label.affine, affine, atol=1e-5)

    x = torch.from_numpy(np.clip((volume + 125.0) / 400.0, 0.0, 1.0))
    with torch.no_grad():
        planes = F.interpolate(x.permute(2, 0, 1)[:, None], size=(128, 128), mode="bilinear", align_corners=False)
        logits = F.interpolate(network(planes), size=volume.shape[:2], mode="bilinear", align_corners=False)
    expected = logits.argmax(1).permute(1, 2, 0).numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(predicted, expected)
