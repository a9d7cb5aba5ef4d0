"""Figures read right at every size: nothing cut, blocks by their one name, red the worse
side of every difference map with the colour bar saying which end is which, accuracy
differences in points, and per-resolution baselines when a profile has several."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import BboxImage

from blockprof.infra import plots

from conftest import run_cli


def _summary(rows: int, cols: int, resolutions=(np.nan,)) -> pd.DataFrame:
    blocks = ["mbconv3_e3_k3", "mbconv3_e6_k7", "mbconv3_e4_k5"][:cols]
    return pd.DataFrame([{"unit": u, "layer": 0, "block": b, "resolution": r, "v": 0.5 - u * 0.3 + k * 0.1}
                         for r in resolutions for u in range(rows) for k, b in enumerate(blocks)])


def _text(fig) -> PathCollection:
    (text,) = [a for a in fig.artists if isinstance(a, PathCollection)]
    return text


@pytest.mark.parametrize("rows,cols,resolutions", [(1, 1, (np.nan,)), (2, 3, (np.nan,)), (1, 1, (160, 224))])
def test_nothing_is_cut_at_any_size(rows, cols, resolutions):
    """Every string (title, colour-bar label, the bar's end words) lies inside the figure."""
    label = "accuracy (predicted) \u2212 baseline [pp]"
    fig = plots.block_heatmaps(_summary(rows, cols, resolutions), "v",
                               "mbv3 on note10: accuracy (predicted) \u2212 baseline [pp], 50 archs per block", label,
                               diverging=True, higher_is_better=True, ends=("less accurate", "more accurate"),
                               panel_notes={"160": "vs the 50 baseline archs at 160 px"})
    text = _text(fig)
    w, h = fig.get_size_inches()
    for s, path, (ox, oy) in zip(text.strings, text.get_paths(), text.get_offsets()):
        v = path.vertices + (ox, oy)
        assert v[:, 0].min() >= 0 and v[:, 0].max() <= w and v[:, 1].min() >= 0 and v[:, 1].max() <= h, s
    assert {label, "less accurate", "more accurate", "mbconv3_e3_k3"} <= set(text.strings)
    plots.close(fig)


@pytest.mark.parametrize("higher_is_better,worst", [(False, 1.0), (True, -1.0)])
def test_red_is_the_worse_side(higher_is_better, worst):
    fig = plots.block_heatmaps(_summary(2, 3), "v", "t", "d", diverging=True, higher_is_better=higher_is_better)
    heat = [a for a in fig.artists if isinstance(a, BboxImage)][0]
    r, g, b, _ = heat.get_cmap()(heat.norm(worst * heat.norm.vmax))
    assert r > b + 0.2  # the worse extreme is red
    plots.close(fig)


def test_profile_figures_name_blocks_once_and_compare_each_resolution_with_its_own_baseline(tmp_path):
    """A real profile at two resolutions: difference maps in pp against paired baselines,
    predicted accuracy said so, blocks named by their tokens."""
    run = tmp_path / "run"
    r = run_cli(["task.num_archs=4", "task.all=false", "task.blocks=[[1,0,7,6,160],[1,0,7,6,224]]",
                 "metric.names=[accuracy,latency]", "tracking=none", f"paths.output_root={tmp_path}",
                 f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"heatmap_accuracy_diff.png", "heatmap_latency_diff.png"} <= {p.name for p in run.iterdir()}

    import blockprof
    from blockprof.app.main import RunContext
    from blockprof.app.tasks.profile import _baselines
    cfg = blockprof.compose(["metric.names=[accuracy,latency]", f"paths.output_root={tmp_path}"])
    space = blockprof.build_space("mbv3")
    ctx = RunContext(cfg, space, np.random.default_rng(0), run)
    samples, summary = pd.read_csv(run / "samples.csv"), pd.read_csv(run / "summary.csv")
    base = summary[summary["block"] == "random"].iloc[0]
    means, notes = _baselines(ctx, samples, base, "latency", ["160", "224"])
    rand = samples[samples["group"] == 0]
    for k in ("160", "224"):
        paired = ctx.metrics["latency"].evaluate([space.parse(t, int(k)) for t in rand["arch"]])
        assert means[k] == pytest.approx(float(np.mean(paired)))
        assert notes[k] == f"vs the 4 baseline archs at {k} px"
    assert means["160"] < float(base["latency_mean"]) < means["224"]  # the offset the paired baselines remove
    assert plots.metric_label(cfg, "accuracy") == "accuracy (predicted)"
    assert "mbconv3_e6_k7" in summary["block"].tolist()
