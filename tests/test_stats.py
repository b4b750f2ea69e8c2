"""The evaluation protocol's statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from common.stats import paired_bootstrap, subject_scores


def _write_csv(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_subject_scores_average_classes_then_cases_of_a_subject(tmp_path):
    path = tmp_path / "metrics_per_case.csv"
    _write_csv(
        path,
        [
            "case,dice_liver,dice_tumour,hd95_liver,hd95_tumour,sensitivity_liver,sensitivity_tumour,subject",
            "a_1,0.8,nan,4.0,nan,0.9,nan,a",  # tumour absent from both: left out, case = 0.8
            "a_2,0.6,0.2,2.0,6.0,0.7,0.1,a",  # case = 0.4
            "b_1,1.0,0.5,1.0,,1.0,0.4,b",  # an empty cell reads as NaN too
            "c_1,nan,nan,nan,nan,nan,nan,c",  # nothing defined: subject c has no score
        ],
    )
    dice = subject_scores(path)
    assert dice == pytest.approx({"a": (0.8 + 0.4) / 2, "b": 0.75})
    assert subject_scores(path, "hd95") == pytest.approx({"a": (4.0 + 4.0) / 2, "b": 1.0})
    assert subject_scores(path, "dice", ["tumour"]) == pytest.approx({"a": 0.2, "b": 0.5})
    rows = [{"case": "x", "dice_liver": 0.5, "subject": "s"}, {"case": "y", "dice_liver": "nan", "subject": "s"}]
    assert subject_scores(rows) == {"s": 0.5}  # rows in memory; NaN as a string or a float
    with pytest.raises(KeyError, match="dice_spleen"):
        subject_scores(path, "dice", ["spleen"])


def _one_seed(values: dict[str, float]) -> dict[int, dict[str, float]]:
    return {0: values}


def test_the_mean_is_the_mean_over_subjects_of_the_seed_averaged_scores():
    kd = {
        0: {"s1": 0.9, "s2": 0.5, "s3": 0.4},
        1: {"s1": 0.7, "s2": 0.7, "s3": 0.2},
        2: {"s1": 0.8, "s2": 0.6, "s3": 0.3},
    }
    scores = {
        "student": {0: {"s1": 0.8, "s2": 0.6, "s3": 0.1}, 1: {"s1": 0.6, "s2": 0.4, "s3": 0.3}},
        "kd": kd,
        "teacher": _one_seed({"s1": 1.0, "s2": 0.8, "s3": 0.6, "s4": 0.9}),  # s4: only the teacher scored it
    }
    stats = paired_bootstrap(scores, "student", n_boot=500)
    # student per subject: 0.7, 0.5, 0.2; kd: 0.8, 0.6, 0.3; teacher: 1.0, 0.8, 0.6 (s4 left out)
    assert stats["student"]["mean"] == pytest.approx(1.4 / 3)
    assert stats["kd"]["mean"] == pytest.approx(1.7 / 3)
    assert stats["teacher"]["mean"] == pytest.approx(2.4 / 3)
    assert stats["kd"]["difference"] == pytest.approx(0.1) and stats["teacher"]["difference"] == pytest.approx(1 / 3)
    assert [stats[m]["seeds"] for m in scores] == [2, 3, 1]
    assert {s["subjects"] for s in stats.values()} == {3}
    assert stats["student"]["verdict"] == "baseline" and stats["student"]["difference"] == 0.0
    lo, hi = stats["teacher"]["ci"]
    assert 0.6 <= lo < stats["teacher"]["mean"] < hi <= 1.0 + 1e-12  # within the range of its subject scores


def test_a_constant_difference_has_a_zero_width_interval_at_that_value():
    base = {f"s{i}": 0.1 * i for i in range(10)}
    scores = {"student": _one_seed(base), "kd": _one_seed({s: v + 0.25 for s, v in base.items()})}
    kd = paired_bootstrap(scores, "student")["kd"]
    lo, hi = kd["difference_ci"]
    assert lo == pytest.approx(0.25, abs=1e-12) and hi == pytest.approx(0.25, abs=1e-12)
    assert kd["difference"] == pytest.approx(0.25) and kd["verdict"] == "better"
    worse = paired_bootstrap(scores, "kd")["student"]
    assert worse["difference_ci"][1] == pytest.approx(-0.25) and worse["verdict"] == "worse"
    lower = paired_bootstrap(scores, "student", higher_is_better=False)["kd"]  # e.g. HD95: higher is worse
    assert lower["verdict"] == "worse"


def test_plus_one_on_half_the_subjects_and_minus_one_on_the_other_half_is_no_difference():
    base = {f"s{i}": 0.5 for i in range(20)}
    other = {f"s{i}": 0.5 + (1 if i % 2 else -1) for i in range(20)}
    kd = paired_bootstrap({"student": _one_seed(base), "kd": _one_seed(other)}, "student")["kd"]
    lo, hi = kd["difference_ci"]
    assert kd["difference"] == pytest.approx(0.0) and lo < 0 < hi and kd["verdict"] == "no difference"


def test_the_same_seed_gives_the_same_intervals_and_another_seed_other_ones():
    scores = {
        "student": _one_seed({f"s{i}": (i * 37 % 11) / 11 for i in range(15)}),
        "kd": {0: {f"s{i}": (i * 53 % 13) / 13 for i in range(15)}, 1: {f"s{i}": (i * 7 % 5) / 5 for i in range(15)}},
    }
    first, again = paired_bootstrap(scores, "student", seed=3), paired_bootstrap(scores, "student", seed=3)
    assert first == again
    other = paired_bootstrap(scores, "student", seed=4)
    assert other["kd"]["ci"] != first["kd"]["ci"] and other["kd"]["mean"] == first["kd"]["mean"]


def test_pairing_keeps_the_interval_of_a_constant_difference_narrow_however_much_subjects_vary():
    spread = {f"s{i}": v for i, v in enumerate([0.05, 0.95, 0.2, 0.9, 0.1, 0.8, 0.3, 0.99, 0.15, 0.7, 0.0, 0.6])}
    scores = {"student": _one_seed(spread), "kd": _one_seed({s: v + 0.01 for s, v in spread.items()})}
    stats = paired_bootstrap(scores, "student")
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(stats["student"]["ci"]) > 0.2 and width(stats["kd"]["ci"]) > 0.2  # the subjects vary a lot
    assert width(stats["kd"]["difference_ci"]) < 1e-9  # the paired difference does not
    assert stats["kd"]["verdict"] == "better"  # while the two means' own intervals overlap almost entirely
    assert stats["kd"]["ci"][0] < stats["student"]["ci"][1]


def test_no_baseline_gives_means_only_and_bad_input_is_refused():
    stats = paired_bootstrap({"a": _one_seed({"s": 0.5})}, None)
    assert stats["a"]["mean"] == 0.5 and stats["a"]["difference"] is None and stats["a"]["verdict"] is None
    with pytest.raises(ValueError, match="baseline 'b'"):
        paired_bootstrap({"a": _one_seed({"s": 0.5})}, "b")
    with pytest.raises(ValueError, match="no subject"):
        paired_bootstrap({"a": _one_seed({"s": 0.5}), "b": _one_seed({"t": 0.5})}, "a")
    assert math.isclose(paired_bootstrap({"a": _one_seed({"s": 0.5, "t": 0.7})}, "a", ci=0.5)["a"]["mean"], 0.6)
