"""Pictures and tables for a results folder: training curves from TensorBoard event files, prediction overlays, and
Markdown tables. Drawn with Pillow only (no plotting library), so a report needs nothing beyond the bundles' own
requirements.

- :func:`read_scalars` reads every scalar of the event files a bundle's ``TensorBoardStatsHandler`` wrote;
- :func:`curves_figure` draws a run's training loss (per iteration, smoothed) next to its validation metric;
- :func:`overlay` / :func:`overlay_grid` colour label maps over an image, one row per slice, one column per source;
- :func:`markdown_table` formats a header and rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "read_scalars",
    "smooth",
    "line_chart",
    "curves_figure",
    "CLASS_COLOURS",
    "overlay",
    "overlay_grid",
    "markdown_table",
]

Series = Sequence[tuple[float, float]]
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
# label value -> colour of its overlay (1 liver green, 2 tumour red, then the palette)
CLASS_COLOURS = {1: (0, 200, 0), 2: (230, 30, 30), 3: (30, 120, 255), 4: (240, 200, 0)}


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the TensorBoard event files directly in ``log_dir`` (not its sub-folders), as
    ``tag -> [(step, value), ...]`` sorted by step; empty when there are none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            scalars.setdefault(tag, []).extend((e.step, float(e.value)) for e in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def smooth(values: Series, window: int) -> list[tuple[float, float]]:
    """Trailing moving average over ``window`` points (the first points average what exists)."""
    out, total = [], 0.0
    for i, (x, y) in enumerate(values):
        total += y
        if i >= window:
            total -= values[i - window][1]
        out.append((x, total / min(i + 1, window)))
    return out


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def line_chart(
    series: Mapping[str, Series], title: str, xlabel: str, ylabel: str = "", size: tuple[int, int] = (480, 320)
) -> Image.Image:
    """A line chart of ``series`` (label -> points) with axes, ticks and a legend; non-finite points are dropped."""
    width, height = size
    left, right, top, bottom = 58, 12, 26, 38
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    draw.text((left, 6), title, fill="black", font=font)
    points = {k: [(float(x), float(y)) for x, y in v if math.isfinite(y)] for k, v in series.items()}
    points = {k: v for k, v in points.items() if v}
    box = (left, top, width - right, height - bottom)
    if not points:
        draw.rectangle(box, outline=(90, 90, 90))
        draw.text((left + 10, top + 10), "no data", fill=(120, 120, 120), font=small)
        return image
    xs = [x for v in points.values() for x, _ in v]
    ys = [y for v in points.values() for _, y in v]
    xticks, yticks = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    x0, x1 = min(xticks[0], min(xs)), max(xticks[-1], max(xs))
    y0, y1 = min(yticks[0], min(ys)), max(yticks[-1], max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
            box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]),
        )

    for t in xticks:
        px, _ = to_pixel(t, y0)
        draw.line([(px, box[3]), (px, box[3] + 4)], fill=(90, 90, 90))
        draw.text((px - 10, box[3] + 6), _label(t), fill="black", font=small)
    for t in yticks:
        _, py = to_pixel(x0, t)
        draw.line([(box[0], py), (box[2], py)], fill=(232, 232, 232))
        draw.text((4, py - 6), _label(t), fill="black", font=small)
    draw.rectangle(box, outline=(90, 90, 90))
    draw.text(((box[0] + box[2]) // 2 - 20, height - 16), xlabel, fill="black", font=small)
    if ylabel:
        draw.text((4, top - 14), ylabel, fill="black", font=small)
    for i, (name, values) in enumerate(points.items()):
        colour = PALETTE[i % len(PALETTE)]
        pixels = [to_pixel(x, y) for x, y in values]
        if len(pixels) == 1:
            px, py = pixels[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        else:
            draw.line(pixels, fill=colour, width=2)
        draw.line([(box[2] - 130, top + 10 + 14 * i), (box[2] - 112, top + 10 + 14 * i)], fill=colour, width=3)
        draw.text((box[2] - 108, top + 4 + 14 * i), name[:20], fill="black", font=small)
    return image


def curves_figure(scalars: Mapping[str, Series], title: str) -> Image.Image | None:
    """A run's curves side by side: training loss per iteration (``loss``, or ``train_loss`` when the run logs only
    that; smoothed, raw in grey) and every validation metric (``val_*``) per epoch. None when neither is there."""
    loss_tag = next((t for t in ("loss", "train_loss") if len(scalars.get(t, [])) > 0), None)
    val_tags = sorted(t for t in scalars if t.startswith("val_"))
    panels = []
    if loss_tag:
        raw = scalars[loss_tag]
        window = max(1, len(raw) // 25)
        series = {"loss": raw} if window == 1 else {"loss": raw, f"mean of {window}": smooth(raw, window)}
        panels.append(line_chart(series, f"{title}: training loss", "iteration"))
    if val_tags:
        panels.append(line_chart({t: scalars[t] for t in val_tags}, f"{title}: validation", "epoch"))
    if not panels:
        return None
    figure = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        figure.paste(panel, (x, 0))
        x += panel.width
    return figure


def overlay(image: np.ndarray, label: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` scaled to [0, 255] in grey, each label value > 0 blended in its colour."""
    image = np.asarray(image, np.float32)
    low, high = float(np.min(image)), float(np.max(image))
    grey = (image - low) / (high - low) if high > low else np.zeros_like(image)
    rgb = np.repeat((grey * 255)[..., None], 3, axis=-1)
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape:
            raise ValueError(f"label of shape {label.shape} does not fit the image of shape {image.shape}.")
        for value in np.unique(label):
            if value <= 0:
                continue
            colour = CLASS_COLOURS.get(int(value), PALETTE[int(value) % len(PALETTE)])
            mask = label == value
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], scale: int = 2, caption_height: int = 18
) -> Image.Image:
    """A grid of (H, W, 3) tiles: one row per ``(row name, [(column caption, tile), ...])``, upscaled ``scale``×
    (nearest), captions above each tile; the row name is written in the first tile's caption."""
    if not rows:
        raise ValueError("overlay_grid needs at least one row.")
    tile_h = max(t.shape[0] for _, tiles in rows for _, t in tiles) * scale
    tile_w = max(t.shape[1] for _, tiles in rows for _, t in tiles) * scale
    columns = max(len(tiles) for _, tiles in rows)
    grid = Image.new("RGB", (columns * tile_w, len(rows) * (tile_h + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for r, (name, tiles) in enumerate(rows):
        y = r * (tile_h + caption_height)
        for c, (caption, tile) in enumerate(tiles):
            text = f"{name}: {caption}" if c == 0 else caption
            draw.text((c * tile_w + 3, y + 3), text, fill="black", font=font)
            picture = Image.fromarray(tile).resize((tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST)
            grid.paste(picture, (c * tile_w, y + caption_height))
    return grid


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])
