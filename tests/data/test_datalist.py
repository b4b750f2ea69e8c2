"""Bad input is refused with a message that names the file and the problem."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from common.data.datalist import load_datalist
from common.data.synthetic import make_synthetic_dataset
from common.errors import DataError


@pytest.fixture()
def dataset(tmp_path):
    return make_synthetic_dataset(tmp_path / "ds", num_items=(2, 1, 1), size=16)


def test_valid_datalist_gives_absolute_paths(dataset):
    items = load_datalist(dataset, "training", num_classes=3)
    assert len(items) == 2 and all(item["image"].startswith(str(dataset)) for item in items)
    assert len(load_datalist(dataset, "training", num_classes=3, limit=1)) == 1


def test_several_splits_are_joined_in_order(dataset):
    joined = load_datalist(dataset, ["training", "test"], num_classes=3)
    assert joined == load_datalist(dataset, "training", num_classes=3) + load_datalist(dataset, "test", num_classes=3)
    with pytest.raises(DataError, match="no 'unlabelled' list"):
        load_datalist(dataset, ["training", "unlabelled"])


def test_missing_dataset_dir_and_datalist(tmp_path):
    with pytest.raises(DataError, match="does not exist.*prepare_data"):
        load_datalist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="datalist.json"):
        load_datalist(tmp_path)


def test_label_value_outside_num_classes(dataset):
    with pytest.raises(DataError, match=r"label '.*label_000.nii.gz' has values \[2\] outside 0..1"):
        load_datalist(dataset, "training", num_classes=2)


def test_missing_file_shape_mismatch_and_empty_split(dataset):
    datalist = json.loads((dataset / "datalist.json").read_text())
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.uint8), np.eye(4)), dataset / datalist["test"][0]["label"])
    with pytest.raises(DataError, match="shape mismatch"):
        load_datalist(dataset, "test", num_classes=3)
    (dataset / datalist["validation"][0]["image"]).unlink()
    with pytest.raises(DataError, match="image file not found"):
        load_datalist(dataset, "validation", num_classes=3)
    datalist["validation"] = []
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(DataError, match="'validation' split .* is empty"):
        load_datalist(dataset, "validation")


def test_unreadable_image_and_non_finite_values_are_named(dataset):
    datalist = json.loads((dataset / "datalist.json").read_text())
    image = dataset / datalist["training"][0]["image"]
    image.write_bytes(b"not a NIfTI file")
    with pytest.raises(DataError, match=r"cannot read image '.*image_000.nii.gz'"):
        load_datalist(dataset, "training", num_classes=3)
    values = np.full((16, 16), 0.5, np.float32)
    values[3, 4], values[5, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(values, np.eye(4)), image)
    with pytest.raises(DataError, match=r"image '.*image_000.nii.gz' has 2 NaN or Inf values"):
        load_datalist(dataset, "training", num_classes=3)


def test_label_budget_spreads_evenly_or_takes_the_first(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "budget", num_items=(9, 1, 1), size=16)
    every = load_datalist(ds, "training", check=False)
    even = load_datalist(ds, "training", check=False, limit=3, limit_mode="even")
    assert even == [every[0], every[4], every[8]]  # both ends and the middle of the (ordered) slab
    assert load_datalist(ds, "training", check=False, limit=3) == every[:3]
    assert load_datalist(ds, "training", check=False, limit=20, limit_mode="even") == every
    with pytest.raises(DataError, match="limit_mode must be"):
        load_datalist(ds, "training", check=False, limit=2, limit_mode="random")
    with pytest.raises(DataError, match="must be >= 1"):
        load_datalist(ds, "training", check=False, limit=0)


def test_unlabelled_images_of_several_folders_are_joined_without_labels(tmp_path):
    from common.data.datalist import load_images

    a = make_synthetic_dataset(tmp_path / "a", num_items=(2, 1, 1), size=16)
    b = make_synthetic_dataset(tmp_path / "b", num_items=(3, 1, 1), size=16)
    items = load_images([a, b])
    assert [set(i) for i in items] == [{"image"}] * 5
    assert [i["image"] for i in items] == [i["image"] for i in load_datalist(a) + load_datalist(b)]
    with pytest.raises(DataError, match="transfer_dirs is empty"):
        load_images([])
