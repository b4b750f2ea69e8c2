"""The teacher cache refuses stale, corrupt or misfitting entries with a message naming the file."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from common.engines.teacher_cache import LoadTeacherCached, TeacherCache
from common.errors import DataError


@pytest.fixture()
def image() -> MetaTensor:
    return MetaTensor(torch.rand(1, 16, 16), meta={"filename_or_obj": "/data/images/image_007.nii.gz"})


def test_hit_adds_the_logits(tmp_path, image):
    cache = TeacherCache(tmp_path, "fp")
    cache.save(image, {"logits": torch.ones(3, 16, 16)})
    out = LoadTeacherCached(cache)({"image": image})
    assert torch.equal(out["teacher_logits"], torch.ones(3, 16, 16))


def test_a_miss_is_a_stale_cache_named_with_the_image(tmp_path, image):
    cache = TeacherCache(tmp_path, "another_teacher")
    with pytest.raises(DataError, match=r"no teacher-cache entry for image '/data/images/image_007.nii.gz' .*stale"):
        LoadTeacherCached(cache)({"image": image})


def test_corrupt_or_misfitting_entries_name_the_file_to_delete(tmp_path, image):
    cache = TeacherCache(tmp_path, "fp")
    cache.path(image).parent.mkdir(parents=True)
    cache.path(image).write_bytes(b"truncated")
    with pytest.raises(DataError, match=rf"entry '{cache.path(image)}' is unreadable .*delete it"):
        LoadTeacherCached(cache)({"image": image})
    torch.save({"other": torch.zeros(1)}, cache.path(image))
    with pytest.raises(DataError, match="holds no 'logits' tensor"):
        LoadTeacherCached(cache)({"image": image})
    cache.save(image, {"logits": torch.ones(3, 8, 8)})
    with pytest.raises(DataError, match=r"spatial size \(8, 8\) for image '.*image_007.nii.gz', expected \(16, 16\)"):
        LoadTeacherCached(cache)({"image": image})
