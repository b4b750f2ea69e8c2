"""Property-based test (hypothesis) of data loading: random image sizes and dtypes, class counts 1 to 5 and labels
with absent classes go through the datalist checks, a bundle's real training preprocessing (from its train.json)
and the ground-truth loss without a crash or a NaN; a label value outside the classes is always refused by name.

The example set is derandomised so CI is reproducible.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

from common.data.datalist import load_datalist
from common.errors import DataError
from common.losses.segmentation import dice_ce_loss

TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "bundles" / "teacher_lora" / "configs" / "train.json"


@st.composite
def dataset_spec(draw) -> dict:
    k = draw(st.integers(1, 5))
    labels = max(k, 2)  # K = 1 is a binary {0, 1} label
    items = []
    for _ in range(draw(st.integers(1, 3))):
        shape = (draw(st.integers(4, 40)), draw(st.integers(4, 40)))
        present = draw(st.lists(st.integers(0, labels - 1), min_size=1, max_size=labels, unique=True))
        items.append(
            {
                "shape": shape,
                "present": present,
                "image_kind": draw(st.sampled_from(["uniform", "constant", "int16"])),
                "label_dtype": draw(st.sampled_from([np.uint8, np.int16, np.float32])),
                "seed": draw(st.integers(0, 2**16)),
            }
        )
    return {"k": k, "items": items, "image_size": draw(st.sampled_from([16, 32]))}


def _write(root: Path, spec: dict) -> Path:
    entries = []
    for i, item in enumerate(spec["items"]):
        rng = np.random.default_rng(item["seed"])
        label = rng.choice(item["present"], size=item["shape"]).astype(item["label_dtype"])
        image = {
            "uniform": lambda: rng.random(item["shape"], dtype=np.float32),
            "constant": lambda: np.zeros(item["shape"], np.float32),
            "int16": lambda: rng.integers(-1000, 1000, item["shape"]).astype(np.int16),
        }[item["image_kind"]]()
        names = {"image": f"image_{i}.nii.gz", "label": f"label_{i}.nii.gz"}
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / names["image"])
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / names["label"])
        entries.append(names)
    (root / "datalist.json").write_text(json.dumps({"training": entries}))
    return root


def _preprocessing(image_size: int, normalisation: dict | None = None):
    """The teacher's training preprocessing; the images are windowed from [-1000, 1000] (HU-like int16 images are
    among them) unless ``normalisation`` says otherwise."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["image_size"] = image_size
    parser["normalisation"] = normalisation or {"method": "window", "range": [-1000.0, 1000.0]}
    return parser.get_parsed_content("train#preprocessing")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(dataset_spec())
def test_random_datasets_load_augment_and_give_a_finite_loss(spec):
    k, size = spec["k"], spec["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        items = load_datalist(_write(Path(tmp), spec), "training", num_classes=k)
        loader = DataLoader(Dataset(items, _preprocessing(size)), batch_size=len(items), num_workers=0)
        batch = next(iter(loader))
    image, label = batch["image"].as_tensor(), batch["label"].as_tensor()
    assert image.shape == (len(items), 1, size, size) and label.shape == image.shape
    assert torch.isfinite(image).all()
    present = set().union(*(item["present"] for item in spec["items"])) | {0}  # 0: RandAffine's zero padding
    assert set(label.unique().tolist()) <= present
    logits = torch.randn(len(items), k, size, size, requires_grad=True)
    loss = dice_ce_loss(k)(logits, label)
    loss.backward()
    assert math.isfinite(float(loss)) and torch.isfinite(logits.grad).all()


@settings(max_examples=15, deadline=None, derandomize=True)
@given(dataset_spec(), st.integers(0, 2), st.integers(1, 3))
def test_any_label_value_outside_the_classes_is_refused_by_name(spec, which, excess):
    k = spec["k"]
    which = which % len(spec["items"])
    bad = max(k, 2) - 1 + excess
    with tempfile.TemporaryDirectory() as tmp:
        root = _write(Path(tmp), spec)
        path = root / f"label_{which}.nii.gz"
        label = np.asarray(nib.load(path).dataobj).astype(np.int16)
        label[0, 0] = bad
        nib.save(nib.Nifti1Image(label, np.eye(4)), path)
        with pytest.raises(DataError, match=rf"label '.*label_{which}.nii.gz' has values \[{bad}\] outside 0..{max(k, 2) - 1}"):  # fmt: skip
            load_datalist(root, "training", num_classes=k)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(dataset_spec())
def test_images_outside_the_normalisation_range_are_refused_by_name(spec):
    """With the [0, 1] contract (normalisation range [0, 1]), an HU-like int16 image is refused naming its file;
    images in [0, 1] pass."""
    with tempfile.TemporaryDirectory() as tmp:
        items = load_datalist(_write(Path(tmp), spec), "training", num_classes=spec["k"])
        preprocessing = _preprocessing(spec["image_size"], {"method": "range", "range": [0, 1]})
        for i, item in enumerate(spec["items"]):
            if item["image_kind"] == "int16":
                with pytest.raises(Exception) as info:
                    preprocessing(items[i])
                cause = info.value  # MONAI wraps a transform's error: the DataError is its cause
                while cause is not None and not isinstance(cause, DataError):
                    cause = cause.__cause__
                assert re.search(rf"image '.*image_{i}.nii.gz' has values in .* outside", str(cause))
            else:
                assert float(preprocessing(items[i])["image"].max()) <= 1.2  # [0, 1] plus intensity augmentation
