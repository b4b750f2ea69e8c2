"""Turn a dataset in its publisher's layout into the dataset folder every bundle reads (see docs/datasets.md).

    python scripts/prepare_dataset.py hc18 --src ../shared/datasets/hc18/training_set --out data/hc18
    python scripts/prepare_dataset.py drive --src ../shared/datasets/drive --out data/drive
    python scripts/prepare_dataset.py brats --src ../shared/datasets/brats2013 --out data/brats_2d --dim 2
    python scripts/prepare_dataset.py decathlon --src Task09_Spleen --out data/spleen --dim 3
    python scripts/prepare_dataset.py folder --src my_data --out data/my_data     # my_data/images, my_data/masks
    python scripts/prepare_dataset.py lits --src data/lits_liver --out data/lits_prepared

OUT receives datalist.json (split by subject), dataset.json (labels, channels, normalisation, licence, split),
manifest.json (sha256 of every file) and overlay.png (a sanity figure). A rerun with the same arguments verifies the
manifest and does nothing (--force rebuilds); OUT is replaced only once the new one is complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.data.formats import CT_WINDOWS, FORMATS  # noqa: E402
from common.data.prepare import PrepareOptions, format_summary, prepare_dataset  # noqa: E402
from common.errors import InputError  # noqa: E402


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _window(text: str) -> tuple[float, float]:
    if text in CT_WINDOWS:
        return CT_WINDOWS[text]
    low, high = _numbers(text, 2, "--window")
    if low >= high:
        raise argparse.ArgumentTypeError(f"--window A,B needs A < B, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS), help="the source's layout")
    parser.add_argument("--src", type=Path, required=True, help="the source folder, in its publisher's layout")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2: images / axial slices; 3: volumes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject shuffle and background slices")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--split",
        type=lambda t: _numbers(t, 3, "--split"),
        default=None,
        help="training,validation,test fractions by subject (default 0.7,0.1,0.2; drive: its official test split)",
    )
    group.add_argument("--folds", type=int, default=None, help="K folds (fold_0..fold_{K-1}) instead of a split")
    parser.add_argument(
        "--window",
        type=_window,
        default=None,
        help=f"CT window: {', '.join(f'{k} {list(v)}' for k, v in CT_WINDOWS.items())}, or A,B (default abdomen)",
    )
    parser.add_argument(
        "--background-share",
        type=float,
        default=0.2,
        help="2D slices of volumes: background slices kept per foreground slice of a volume (default 0.2)",
    )
    parser.add_argument("--subject-regex", default=None, help="group 1 of this regex on the case id is the subject")
    parser.add_argument("--max-subjects", type=int, default=None, help="keep N subjects, evenly spaced by id")
    parser.add_argument("--force", action="store_true", help="rebuild even when OUT is up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, prepare, print the summary; exit status 1 with one ``error:`` line on bad input."""
    args = build_parser().parse_args(argv)
    try:
        options = PrepareOptions(
            format=args.format,
            src=args.src,
            out=args.out,
            dim=args.dim,
            seed=args.seed,
            split=args.split,
            folds=args.folds,
            window=args.window,
            background_share=args.background_share,
            subject_regex=args.subject_regex,
            max_subjects=args.max_subjects,
            force=args.force,
        )
        summary = prepare_dataset(options)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
