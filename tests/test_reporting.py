"""Report pictures and tables (common/reporting.py) and network measurements (common/profiling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.profiling import count_macs, count_parameters, latency, machine, median_seconds, peak_memory
from common.reporting import (
    CLASS_COLOURS,
    curves_figure,
    line_chart,
    markdown_table,
    overlay,
    overlay_grid,
    read_scalars,
    smooth,
)


def test_read_scalars_merges_the_event_files_of_a_folder_by_tag(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for offset in (0, 10):  # two writers, as a trainer and its evaluator leave them
        writer = SummaryWriter(str(tmp_path))
        for i in range(3):
            writer.add_scalar("train_loss", float(offset + i), offset + i)
        writer.close()
    scalars = read_scalars(tmp_path)
    assert scalars["train_loss"] == [(0, 0.0), (1, 1.0), (2, 2.0), (10, 10.0), (11, 11.0), (12, 12.0)]
    assert read_scalars(tmp_path / "missing") == {}


def test_smooth_is_a_trailing_mean():
    assert smooth([(1, 1.0), (2, 3.0), (3, 5.0)], 2) == [(1, 1.0), (2, 2.0), (3, 4.0)]


def test_line_chart_draws_each_series_in_its_colour_and_survives_odd_data():
    chart = np.asarray(line_chart({"a": [(0, 0.0), (10, 1.0)], "b": [(0, 1.0), (10, 0.0)]}, "t", "x"))
    assert chart.shape == (320, 480, 3)
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (chart == colour).all(-1).sum() > 50
    # constant, single-point, non-finite and empty series do not break the axes
    line_chart({"c": [(0, 2.0), (1, 2.0)], "d": [(5, float("nan"))], "e": [(3, 1.0)]}, "t", "x")
    empty = np.asarray(line_chart({}, "t", "x"))
    assert empty.shape == (320, 480, 3)


def test_curves_figure_has_a_panel_for_the_loss_and_one_for_validation():
    loss_only = curves_figure({"train_loss": [(i, 1.0 / (i + 1)) for i in range(100)]}, "run")
    both = curves_figure({"loss": [(i, 1.0) for i in range(10)], "val_mean_dice": [(1, 0.1), (2, 0.3)]}, "run")
    assert loss_only.size == (480, 320) and both.size == (960, 320)
    assert curves_figure({"lr": [(1, 0.1)]}, "run") is None


def test_overlay_tints_each_class_in_its_colour_and_leaves_background_grey():
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    label = np.zeros((4, 4), np.uint8)
    label[0, 0], label[3, 3] = 1, 2
    rgb = overlay(image, label, alpha=1.0)
    assert tuple(rgb[0, 0]) == CLASS_COLOURS[1] and tuple(rgb[3, 3]) == CLASS_COLOURS[2]
    assert rgb[1, 1, 0] == rgb[1, 1, 1] == rgb[1, 1, 2]
    assert tuple(overlay(image, None)[3, 3]) == (255, 255, 255)
    with pytest.raises(ValueError, match="does not fit"):
        overlay(image, label[:2])


def test_overlay_grid_lays_out_rows_and_columns():
    tile = np.zeros((8, 10, 3), np.uint8)
    grid = overlay_grid([("s1", [("a", tile), ("b", tile)]), ("s2", [("a", tile), ("b", tile)])], scale=2)
    assert grid.size == (2 * 20, 2 * (16 + 18))
    with pytest.raises(ValueError):
        overlay_grid([])


def test_markdown_table_escapes_pipes():
    assert markdown_table(["a", "b"], [["1", "x|y"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_parameters_and_macs_of_a_linear_layer():
    net = _Linear()
    assert count_parameters(net) == 8 * 4 + 4
    assert count_macs(net, torch.rand(3, 8)) == 3 * 8 * 4  # one multiply-accumulate per weight and sample
    assert net.training  # the mode is restored


def test_median_seconds_calls_the_function_warmup_plus_runs_times():
    calls = []
    assert median_seconds(lambda: calls.append(1), warmup=2, runs=5) >= 0
    assert len(calls) == 7
    with pytest.raises(ValueError):
        median_seconds(lambda: None, runs=0)
    assert latency(_Linear(), torch.rand(1, 8), warmup=1, runs=2) > 0


def test_peak_memory_sees_a_large_temporary_allocation():
    def allocate() -> None:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed on return
        x.add_(1)

    assert peak_memory(allocate) >= 32 * 2**20


def test_machine_names_torch_and_threads():
    info = machine()
    assert info["torch"] == torch.__version__ and int(info["torch_threads"]) >= 1 and info["cpu"]
