"""Figures. matplotlib runs headless (Agg) everywhere.

The block heatmaps are drawn for speed (a profile writes eight of them, and with
one `Text` artist per cell, tight layout and a tight-bbox save they took several
times longer than everything else in the task together): a fixed layout in
inches with margins measured from the labels, images placed without Axes, and
all text - cell values, row / column labels, titles, colour-bar ticks - as one
`PathCollection` of cached glyph outlines per figure.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps, ticker  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import LineCollection, PatchCollection, PathCollection  # noqa: E402
from matplotlib.colors import Normalize, to_rgba_array  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties, findfont, get_font  # noqa: E402
from matplotlib.image import BboxImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.path import Path as MPath  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402
from matplotlib.transforms import Bbox, TransformedBbox  # noqa: E402

HEATMAP_DPI = 110
CELL_FONT = 7.0       # pt: cell values
LABEL_FONT = 7.0      # pt: row / column labels
TICK_FONT = 8.0       # pt: colour-bar ticks
CELL_W, CELL_H = 0.62, 0.30  # inches per heatmap cell
_DIGIT_HALF = 0.364   # em: half the height of a digit (DejaVu Sans), for vertical centring


class GlyphText:
    """Strings as outline paths, composed from per-character outlines cached once, so
    laying out a string is a numpy concatenation and many strings draw as one collection."""

    def __init__(self, prop: FontProperties | None = None):
        self.prop = prop or FontProperties(family="DejaVu Sans")
        self._chars: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self._strings: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def _char(self, ch: str):
        got = self._chars.get(ch)
        if got is None:
            font = get_font(findfont(self.prop))
            font.set_size(100, 72)  # TextPath shares this cached font object: set the size every time
            advance = font.load_char(ord(ch)).linearHoriAdvance / 65536 / 100
            if ch.isspace():  # no outline (and TextPath cannot make an empty one)
                got = (np.zeros((0, 2)), np.zeros(0, np.uint8), advance)
            else:
                p = TextPath((0, 0), ch, size=1, prop=self.prop)
                got = (np.asarray(p.vertices, float), np.asarray(p.codes, np.uint8), advance)
            self._chars[ch] = got
        return got

    def em(self, s: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(vertices in em with the pen starting at 0 on the baseline, codes, advance width in em)."""
        got = self._strings.get(s)
        if got is None:
            verts, codes, x = [], [], 0.0
            for ch in s:
                v, c, adv = self._char(ch)
                if len(v):
                    verts.append(v + (x, 0.0))
                    codes.append(c)
                x += adv
            got = ((np.concatenate(verts), np.concatenate(codes), x) if verts
                   else (np.zeros((0, 2)), np.zeros(0, np.uint8), x))
            if len(self._strings) < 100_000:
                self._strings[s] = got
        return got

    def width(self, s: str, size: float) -> float:
        """Advance width of `s` in inches at `size` pt."""
        return self.em(s)[2] * size / 72

    def path(self, s: str, size: float, ha: str = "center", va: str = "center", rotation: float = 0.0) -> MPath:
        """`s` at `size` pt as a path in inches around its anchor (0, 0): `ha` left / center /
        right by advance width, `va` center (on the digit height) / baseline / top, then
        rotated counter-clockwise by `rotation` degrees about the anchor."""
        v, c, w = self.em(s)
        if not len(v):
            return MPath(np.zeros((1, 2)), [MPath.MOVETO])
        dx = {"left": 0.0, "center": -w / 2, "right": -w}[ha]
        dy = {"center": -_DIGIT_HALF, "baseline": 0.0, "top": -2 * _DIGIT_HALF}[va]
        v = (v + (dx, dy)) * (size / 72)
        if rotation:
            t = math.radians(rotation)
            v = v @ np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
        return MPath(v, c)


GLYPHS = GlyphText()


class TextLayer:
    """Strings collected for one figure, drawn as one path collection: each anchored at a
    point of any transform (data, axes, figure), sized in points like ordinary text."""

    def __init__(self, fig):
        self.fig = fig
        self.paths: list[MPath] = []
        self.strings: list[str] = []
        self.offsets: list[tuple[float, float]] = []
        self.colors: list = []

    def add(self, s: str, xy, transform, size: float, color="black", **kw) -> None:
        """One string at `xy` in `transform` (resolved to figure inches now: the layout is fixed)."""
        self.paths.append(GLYPHS.path(s, size, **kw))
        self.strings.append(s)
        self.offsets.append(tuple(self.fig.dpi_scale_trans.inverted().transform(transform.transform(xy))))
        self.colors.append(color)

    def add_many(self, strings, xy: np.ndarray, size: float, colors, **kw) -> None:
        """Many strings at figure-inch positions `xy` [n, 2]."""
        strings = list(strings)
        self.paths += [GLYPHS.path(s, size, **kw) for s in strings]
        self.strings += strings
        self.offsets += [tuple(p) for p in np.asarray(xy, float)]
        self.colors += list(colors)

    def draw_into(self) -> PathCollection:
        coll = PathCollection(self.paths, offsets=np.array(self.offsets, float).reshape(-1, 2),
                              offset_transform=self.fig.dpi_scale_trans, transform=self.fig.dpi_scale_trans,
                              facecolors=to_rgba_array(self.colors) if self.colors else "black",
                              edgecolors="none", linewidths=0, antialiaseds=True, zorder=5)
        coll.strings = list(self.strings)  # what it says, for tests and readers of the figure
        self.fig.add_artist(coll)
        return coll


def _image(fig, data: np.ndarray, box, cmap, norm, interpolation: str) -> BboxImage:
    """`data` (row 0 on top) coloured by cmap / norm, filling `box` = (x, y, w, h) in figure inches."""
    im = BboxImage(TransformedBbox(Bbox.from_bounds(*box), fig.dpi_scale_trans), cmap=cmap, norm=norm,
                   interpolation=interpolation, origin="upper")
    im.set_data(np.ma.masked_invalid(data))
    fig.add_artist(im)
    return im


def _text_colors(cmap, norm, grid: np.ndarray) -> np.ndarray:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    rgba = cmap(norm(np.nan_to_num(grid)))
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    out = np.zeros(grid.shape + (4,))
    out[..., 3] = 1.0
    out[lum < 0.5, :3] = 1.0
    return out


def _colorbar_ticks(lo: float, hi: float) -> tuple[np.ndarray, list[str], str]:
    """Tick values, their labels and the scientific multiplier (e.g. '1e−5'), like a colour bar's."""
    loc = ticker.MaxNLocator(nbins=6)
    vals = loc.tick_values(lo, hi)
    eps = 1e-9 * max(abs(hi - lo), abs(hi), 1e-300)
    vals = vals[(vals >= lo - eps) & (vals <= hi + eps)]
    fmt = ticker.ScalarFormatter(useOffset=False)
    fmt.create_dummy_axis()
    fmt.axis.set_view_interval(lo, hi)
    fmt.set_locs(vals)
    return vals, [fmt(v) for v in vals], fmt.get_offset()


def block_label(block: str) -> str:
    """A block's name in figures: its token as written in arch strings, insight files and
    summary.csv (`mbconv3_e6_k7`: MBConv, expansion 6, kernel 7), never an abbreviation."""
    return str(block)


def metric_label(cfg, name: str) -> str:
    """A metric's name in figures: accuracy says where it comes from."""
    if name == "accuracy":
        source = str(cfg.metric.accuracy.get("source", "predictor"))
        return "accuracy (predicted)" if source == "predictor" else "accuracy (supernet, ImageNet)"
    return name


def block_heatmaps(summary: pd.DataFrame, value_col: str, title: str, cbar_label: str,
                   diverging: bool = False, dpi: int = HEATMAP_DPI, higher_is_better: bool | None = None,
                   ends: tuple[str, str] | None = None, panel_notes: dict[str, str] | None = None):
    """Rows = unit-layer, columns = block; one panel per fixed resolution (the paper's figure).

    `summary` holds single-slot groups with columns unit, layer, block, resolution, value_col.
    Every cell is annotated with its value (3 significant digits); a diverging map
    is centred at 0 and symmetric, and red is the worse side: positive values are red
    unless `higher_is_better`. `ends` = (low end, high end) words written at the colour
    bar's ends ("faster", "slower"); `panel_notes` adds a line under a panel's title (its
    baseline). The bar is at least as tall as its label, and the figure as wide as its
    title, so nothing is cut however few cells there are. The layout is fixed: save with
    :func:`save_png` (no tight bounding box needed).
    """
    res = summary["resolution"].to_numpy(dtype=float)
    keys = np.where(np.isnan(res), "any", np.nan_to_num(res).astype(np.int64).astype(str))
    panels = sorted(set(keys.tolist()), key=lambda k: (k != "any", int(k) if k != "any" else 0))
    blocks = list(dict.fromkeys(summary["block"]))
    units = summary["unit"].to_numpy(dtype=np.int64)
    layers = summary["layer"].to_numpy(dtype=np.int64)
    pairs = list(zip(units.tolist(), layers.tolist()))
    rows = sorted(set(pairs))
    row_index = {r: i for i, r in enumerate(rows)}
    col_index = {b: i for i, b in enumerate(blocks)}
    r_idx = np.array([row_index[r] for r in pairs], dtype=np.intp)
    c_idx = np.array([col_index[b] for b in summary["block"]], dtype=np.intp)
    values = summary[value_col].to_numpy(dtype=float)
    vmax = float(np.nanmax(np.abs(values))) if diverging and np.isfinite(values).any() else 0.0
    if diverging and not (vmax > 0 and math.isfinite(vmax)):
        vmax = 1.0  # all zero: any symmetric range keeps 0 in the middle

    xlabels = [block_label(b) for b in blocks]
    ylabels = [f"U{u} L{l}" for u, l in rows]
    sin60 = math.sin(math.radians(60))
    left = 0.2 + max(GLYPHS.width(s, LABEL_FONT) for s in ylabels)
    bottom = 0.25 + sin60 * max(GLYPHS.width(s, LABEL_FONT) for s in xlabels)
    # per panel: the grid, its colour range and colour-bar ticks (their widths size the layout)
    specs = []
    for key in panels:
        grid = np.full((len(rows), len(blocks)), np.nan)
        sel = keys == key
        grid[r_idx[sel], c_idx[sel]] = values[sel]
        if diverging:
            lo, hi = -vmax, vmax
        else:
            finite = grid[np.isfinite(grid)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if not hi > lo:
                lo, hi = lo - 0.5 * max(abs(lo), 1e-12), hi + 0.5 * max(abs(hi), 1e-12)
        specs.append((key, grid, lo, hi, *_colorbar_ticks(lo, hi)))
    tick_w = max((GLYPHS.width(s, TICK_FONT) for sp in specs for s in sp[5]), default=0.0)
    notes = panel_notes or {}
    cbar_gap, cbar_w, gap = 0.1, 0.16, 0.35
    end_w = max((GLYPHS.width(e, TICK_FONT) for e in ends), default=0.0) if ends else 0.0
    cbar_room = max(0.16 + tick_w + 0.1 + 0.2, end_w - cbar_w + 0.1)
    ax_w, ax_h = CELL_W * len(blocks), CELL_H * len(rows)
    # the colour bar (and so the plot area's height) is at least as tall as its rotated label
    bar_h = max(ax_h, GLYPHS.width(cbar_label, 10) + 0.15)
    # room above the plot area: the figure title, the panel titles (and notes), the bar's high end
    top = 0.42 + 0.2 * (1 + any(notes.get(k) for k in panels)) + (0.18 if ends else 0.0)
    # the column labels hang under the grid, which hangs from the top of a bar that may be
    # taller: only what they need below the bar is kept, and room for the bar's low end word
    bottom = max(bottom - (bar_h - ax_h), 0.1) + (0.2 if ends else 0.0)
    # a panel's heading (resolution, baseline note) may be wider than its grid: the panel widens
    head_w = max(max(GLYPHS.width(notes.get(k, ""), 8), GLYPHS.width(f"resolution {k}", 9)) for k in panels)
    panel_w = max(ax_w + cbar_gap + cbar_w + cbar_room, head_w + 0.1)
    fig_w = max(left + len(panels) * panel_w + (len(panels) - 1) * gap + 0.1, GLYPHS.width(title, 10) + 0.4)
    fig_h = bottom + bar_h + top
    # whole pixels, so the saved PNG is exactly the figure's size
    fig_w, fig_h = math.ceil(fig_w * dpi) / dpi, math.ceil(fig_h * dpi) / dpi
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    text = TextLayer(fig)
    # diverging: red is the worse side (RdBu_r: positive red; RdBu: negative red)
    cmap = colormaps[("RdBu" if higher_is_better else "RdBu_r") if diverging else "viridis"]
    grid_bottom = bottom + bar_h - ax_h  # the grid hangs from the top of the plot area
    ticks, frames = [], []
    cx = np.arange(len(blocks))
    ry = np.arange(len(rows))
    for p, (key, grid, lo, hi, vals, labels, mult) in enumerate(specs):
        x0 = left + p * (panel_w + gap)
        norm = Normalize(lo, hi)
        # images placed in inches, no Axes: nothing here needs data coordinates or tick machinery
        _image(fig, grid, (x0, grid_bottom, ax_w, ax_h), cmap, norm, "nearest")
        frames.append((x0, grid_bottom, ax_w, ax_h))
        # cell values, in the cell's contrasting colour
        i, j = np.nonzero(np.isfinite(grid))
        colors = _text_colors(cmap, norm, grid)[i, j]
        cell_xy = np.column_stack([x0 + (j + 0.5) * CELL_W, grid_bottom + ax_h - (i + 0.5) * CELL_H])
        text.add_many([f"{v:.3g}" for v in grid[i, j]], cell_xy, CELL_FONT, colors)
        # row labels left of the rows, column labels under the columns (rotated 60 degrees)
        text.add_many(ylabels, np.column_stack([np.full(len(rows), x0 - 0.06),
                                                grid_bottom + ax_h - (ry + 0.5) * CELL_H]),
                      LABEL_FONT, ["black"] * len(rows), ha="right")
        text.add_many(xlabels, np.column_stack([x0 + (cx + 0.5) * CELL_W + 0.03,
                                                np.full(len(blocks), grid_bottom - 0.06)]),
                      LABEL_FONT, ["black"] * len(blocks), ha="right", va="center", rotation=60)
        plot_top = bottom + bar_h
        head_y = plot_top + 0.1 + (0.18 if ends else 0.0)
        head_x = x0 + max(ax_w, head_w) / 2  # centred on the grid, or wholly right of x0 when wider
        if notes.get(key):
            text.add(notes[key], (head_x, head_y), fig.dpi_scale_trans, 8, color="0.25", ha="center",
                     va="baseline")
            head_y += 0.2
        text.add(f"resolution {key}" if key != "any" else "resolution sampled",
                 (head_x, head_y), fig.dpi_scale_trans, 9, ha="center", va="baseline")
        # colour bar: a gradient image, tick marks and labels
        bx = x0 + ax_w + cbar_gap
        _image(fig, np.linspace(lo, hi, 256)[::-1, None], (bx, bottom, cbar_w, bar_h), cmap, norm, "bilinear")
        frames.append((bx, bottom, cbar_w, bar_h))
        ty = bottom + (vals - lo) / (hi - lo) * bar_h
        cx1 = bx + cbar_w
        ticks += [[(cx1, y), (cx1 + 0.05, y)] for y in ty]
        text.add_many(labels, np.column_stack([np.full(len(vals), cx1 + 0.08), ty]), TICK_FONT,
                      ["black"] * len(vals), ha="left")
        label_x = cx1 + 0.16 + tick_w + 0.1
        text.add(cbar_label, (label_x, bottom + bar_h / 2), fig.dpi_scale_trans, 10, ha="center", va="center",
                 rotation=90)
        if ends:  # what each end of the bar means: "faster" under it, "slower" over it
            text.add(ends[0], (bx, bottom - 0.08), fig.dpi_scale_trans, TICK_FONT, ha="left", va="top")
            text.add(ends[1], (bx, plot_top + 0.08), fig.dpi_scale_trans, TICK_FONT, ha="left", va="baseline")
        if mult:
            text.add(mult, (cx1 + 0.08, plot_top + 0.08 + (0.16 if ends else 0.0)), fig.dpi_scale_trans, TICK_FONT,
                     ha="left", va="baseline")
    fig.add_artist(LineCollection(ticks, colors="black", linewidths=0.8, transform=fig.dpi_scale_trans))
    fig.add_artist(PatchCollection([Rectangle((x, y), w, h) for x, y, w, h in frames], facecolor="none",
                                   edgecolor="black", linewidth=0.8, transform=fig.dpi_scale_trans, zorder=4))
    text.add(title, (fig_w / 2, fig_h - 0.12), fig.dpi_scale_trans, 10, ha="center", va="top")
    text.draw_into()
    return fig


def save_png(fig, path: str | Path) -> None:
    """Write `fig` as PNG at its own size and dpi (no tight-bbox pass: the layout is fixed)."""
    fig.savefig(path, format="png", dpi=fig.dpi)


def close(fig) -> None:
    plt.close(fig)
