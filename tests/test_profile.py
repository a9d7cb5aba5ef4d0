"""task=profile: statistics, slot forcing, outputs, resume, bad specs."""
import re

import numpy as np
import pandas as pd
import pytest

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.metrics.measured import MeasuredLatency
from blockprof.app.profiling import QUANTILES

from conftest import run_cli


def _profile(cfg_factory, run_dir, *overrides):
    cfg = cfg_factory("task=profile", "tracking=none", *overrides)
    return execute(cfg, run_dir=run_dir)


def test_summary_stats_equal_numpy(cfg_factory, tmp_path):
    run = tmp_path / "run"
    _profile(cfg_factory, run, "task.all=false", "task.blocks=[[1,0,7,6,224],[3,3,3,3]]",
                       "task.num_archs=40", "seed=3")
    samples = pd.read_csv(run / "samples.csv")
    on_disk = pd.read_csv(run / "summary.csv")
    assert len(on_disk) == 3 and list(on_disk["block"]) == ["random", "mbconv3_e6_k7", "mbconv3_e3_k3"]
    for _, row in on_disk.iterrows():
        for m in ("accuracy", "mmacs", "params_m", "latency"):
            v = samples.loc[samples["group"] == row["group"], m].to_numpy()
            assert len(v) == 40
            assert row[f"{m}_mean"] == pytest.approx(np.mean(v))
            assert row[f"{m}_std"] == pytest.approx(np.std(v))
            for key, q in QUANTILES.items():
                assert row[f"{m}_{key}"] == pytest.approx(np.quantile(v, q))
            assert row[f"{m}_min"] == pytest.approx(v.min()) and row[f"{m}_max"] == pytest.approx(v.max())
    # the seed's column order per metric
    cols = [c for c in on_disk.columns if c.startswith("latency_")]
    assert cols == [f"latency_{s}" for s in ("mean", "std", "q01", "q05", "q95", "q99", "min", "max")]
    assert on_disk.loc[1, "description"] == "Unit 1 Layer 0 as MBConv6_7x7 with Resolution 224"
    extremes = pd.read_csv(run / "extremes.csv")
    best = extremes[(extremes["group"] == 1) & (extremes["metric"] == "accuracy")].iloc[0]
    g1 = samples[samples["group"] == 1]
    assert best["best_value"] == pytest.approx(g1["accuracy"].max())
    assert best["worst_value"] == pytest.approx(g1["accuracy"].min())
    lat = extremes[(extremes["group"] == 1) & (extremes["metric"] == "latency")].iloc[0]
    assert lat["best_value"] == pytest.approx(g1["latency"].min())  # lower is better


def test_samples_carry_the_forced_slot(cfg_factory, tmp_path):
    run = tmp_path / "run"
    _profile(cfg_factory, run, "task.all=false", "task.blocks=[[1,3,7,6,224]]", "task.num_archs=30")
    s = pd.read_csv(run / "samples.csv")
    forced = s[s["group"] == 1]
    assert (forced[["unit", "layer", "kernel", "expand"]] == [1, 3, 7, 6]).all().all()
    assert (forced["resolution"] == 224).all()
    for text in forced["arch"]:
        unit1 = text.split("|")[1].split("->")
        assert len(unit1) == 4 and unit1[3] == "mbconv3_e6_k7"  # layer 3 active: depth raised to 4
    base = s[s["group"] == 0]
    assert base["unit"].isna().all() and (base["slot"] == "random").all()
    # the slot fixes the resolution, so the baseline is drawn at it too: the difference is the block's alone
    assert (base["resolution"] == 224).all()


def test_baseline_samples_resolution_when_no_slot_fixes_it(cfg_factory, tmp_path):
    run = tmp_path / "run"
    _profile(cfg_factory, run, "task.all=false", "task.blocks=[[1,3,7,6]]", "task.num_archs=30")
    s = pd.read_csv(run / "samples.csv")
    assert s[s["group"] == 0]["resolution"].nunique() > 1


def test_damaged_chunk_is_profiled_again(cfg_factory, tmp_path, caplog):
    """A chunk file cut mid-group (or edited) is not trusted: it is recomputed, and the
    result equals an undamaged run's."""
    run = tmp_path / "run"
    args = ("task.all=false", "task.blocks=[[0,0,3,3],[1,0,5,4]]", "task.num_archs=6", "task.chunk_archs=6")
    _profile(cfg_factory, run, *args)
    ref = pd.read_csv(run / "samples.csv")
    chunks = sorted((run / "profile_chunks").glob("groups_*.csv"))
    assert len(chunks) == 3
    text = chunks[1].read_text()
    chunks[1].write_text(text[: len(text) // 2])  # truncated mid-group
    chunks[2].write_bytes(b"\x00\xff" * 40)         # binary garbage
    for f in (run / "samples.csv", run / "summary.csv"):
        f.unlink()
    with caplog.at_level("WARNING"):
        _profile(cfg_factory, run, *args)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 2 and str(chunks[1]) in damaged[0]
    pd.testing.assert_frame_equal(pd.read_csv(run / "samples.csv"), ref)


def test_damaged_settings_file_is_one_line(cfg_factory, tmp_path):
    run = tmp_path / "run"
    args = ("task.all=false", "task.blocks=[[0,0,3,3]]", "task.num_archs=4")
    _profile(cfg_factory, run, *args)
    (run / "profile_chunks" / "settings.json").write_text('{"key": ')
    with pytest.raises(UserError, match=r"settings.json is damaged.*delete .*profile_chunks"):
        _profile(cfg_factory, run, *args)


def test_all_slots_and_heatmaps_for_pn(cfg_factory, tmp_path):
    run = tmp_path / "run"
    summary = _profile(cfg_factory, run, "space=pn", "device=note10", "task.all=true", "task.num_archs=8")
    assert len(summary) == 1 + (5 * 4 + 1) * 9
    for m in ("mmacs", "params_m", "latency"):
        for kind in ("mean", "diff"):
            png = run / f"heatmap_{m}_{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bigger kernels and expansions cost more latency, on average over positions
    single = summary[summary["block"] != "random"]
    by_block = single.groupby("block")["latency_mean"].mean()
    assert by_block["mbconv2_e6_k7"] > by_block["mbconv2_e3_k3"]


def test_resnet50_profile_runs(cfg_factory, tmp_path):
    run = tmp_path / "run"
    summary = _profile(cfg_factory, run, "space=resnet50", "metric=no_latency", "task.all=false",
                       "task.blocks=[[0,0],[1,1,2],[2,3,5,0.35,1]]", "task.num_archs=10")
    assert list(summary["block"]) == ["random", "stem_d0", "stem1_w2", "bneck_e0.35_w1"]
    s = pd.read_csv(run / "samples.csv")
    assert s[s["group"] == 3]["arch"].str.split("|").str[3].str.split("->").str.len().eq(6).all()


class Killed(BaseException):
    """Stands in for SIGINT/SIGKILL mid-run (pytest reserves KeyboardInterrupt)."""


def test_resume_skips_finished_chunks(cfg_factory, tmp_path, monkeypatch):
    """A killed measured-latency profile, rerun into the same folder, measures nothing twice."""
    calls, kill_at = [], [2]
    real = MeasuredLatency.evaluate

    def counting(self, archs):
        archs = list(archs)
        calls.append(len(archs))
        if len(calls) == kill_at[0]:
            kill_at[0] = -1
            raise Killed  # killed while timing the first slot group's chunk
        return real(self, archs)

    monkeypatch.setattr(MeasuredLatency, "evaluate", counting)
    overrides = ["device=local_cpu", "device.latency.source=measured", "metric.names=[latency]",
                 "metric.skip_unavailable=false",
                 "space.resolutions=[160]", "device.latency.warmup=0", "device.latency.repeats=1",
                 "device.latency.chunk_size=1", "device.latency.references=0",  # one slot group per chunk
                 "task.all=false", "task.blocks=[[0,0,3,3],[4,3,7,6]]", "task.num_archs=2"]
    run = tmp_path / "run"
    with pytest.raises(Killed):
        _profile(cfg_factory, run, *overrides)
    assert calls == [2, 2] and not (run / "samples.csv").exists()
    calls.clear()
    _profile(cfg_factory, run, *overrides)
    assert calls == [2, 2]  # the two unfinished slot groups only; the baseline was kept
    s = pd.read_csv(run / "samples.csv")
    assert len(s) == 6 and s["latency"].gt(0).all()
    calls.clear()
    _profile(cfg_factory, run, *overrides)  # all done: nothing measured again
    assert calls == []


def test_resume_with_other_settings_refused(cfg_factory, tmp_path):
    run = tmp_path / "run"
    _profile(cfg_factory, run, "task.all=false", "task.blocks=[[0,0,3,3]]", "task.num_archs=5")
    with pytest.raises(UserError, match="other settings"):
        _profile(cfg_factory, run, "task.all=false", "task.blocks=[[0,0,3,3]]", "task.num_archs=6")


def test_fast_profile_is_deterministic_and_chunk_independent(cfg_factory, tmp_path):
    a = _profile(cfg_factory, tmp_path / "a", "task.num_archs=10", "task.chunk_archs=100000")
    b = _profile(cfg_factory, tmp_path / "b", "task.num_archs=10", "task.chunk_archs=30")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("blocks,needle", [
    ([[1, 0, 7]], "bad block spec [1, 0, 7]"),
    ([[1, 4, 7, 6]], "layer 4 out of range"),
    ([[1, 0, 9, 6]], "kernel 9"),
    ([[1, 0, 7, 5]], "expand 5"),
    ([[[0, 0, 3, 3], [6, 0, 3, 3]]], "unit 6 out of range"),
])
def test_bad_specs_stop_at_start(cfg_factory, tmp_path, blocks, needle):
    cfg = cfg_factory("task=profile", "task.all=false", f"task.blocks={blocks}".replace(" ", ""))
    with pytest.raises(UserError, match=re.escape(needle)):
        execute(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "samples.csv").exists()


def test_bad_spec_on_the_command_line_is_one_line(tmp_path):
    res = run_cli(["task.all=false", "task.blocks=[[1,4,7,6]]", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines == ["error: bad block spec [1, 4, 7, 6]: layer 4 out of range 0..3 for unit 1"], res.stderr
    assert not list((tmp_path / "out").rglob("samples.csv"))


def test_sharded_profile_merges_to_the_unsharded_summary(cfg_factory, tmp_path):
    common = ["task.num_archs=6", "space=pn", "device=note10", "seed=5"]
    whole = _profile(cfg_factory, tmp_path / "whole", *common)
    shards = []
    for i in range(3):
        _profile(cfg_factory, tmp_path / f"shard{i}", *common, f"task.shard_index={i}", "task.num_shards=3")
        shards.append(str(tmp_path / f"shard{i}"))
    part = pd.read_csv(tmp_path / "shard1" / "summary.csv")
    assert 1 < len(part) < len(whole)
    cfg = cfg_factory("task=merge_profile", "tracking=none", *common, f"task.inputs=[{','.join(shards)}]")
    merged = execute(cfg, run_dir=tmp_path / "merged")
    pd.testing.assert_frame_equal(merged.reset_index(drop=True), whole.reset_index(drop=True))
    a = pd.read_csv(tmp_path / "merged" / "summary.csv")
    b = pd.read_csv(tmp_path / "whole" / "summary.csv")
    pd.testing.assert_frame_equal(a, b)
    cfg = cfg_factory("task=merge_profile", "tracking=none", *common, f"task.inputs=[{','.join(shards[:2])}]")
    with pytest.raises(UserError, match="the shards lack"):
        execute(cfg, run_dir=tmp_path / "merged2")
    cfg = cfg_factory("task=merge_profile", "tracking=none", "task.num_archs=7", "space=pn", "device=note10",
                      "seed=5", f"task.inputs=[{','.join(shards)}]")
    with pytest.raises(UserError, match="task.num_archs=6 differs"):
        execute(cfg, run_dir=tmp_path / "merged3")


# ------------------------------------------------------------------ heatmaps and tables (fast paths)
def _toy_summary():
    rows = []
    for u in range(2):
        for l in range(2):
            for k, b in enumerate(("mbconv3_e3_k3", "mbconv3_e6_k7", "mbconv3_e4_k5")):
                rows.append({"unit": u, "layer": l, "block": b, "resolution": np.nan,
                             "v": (u - 0.5) * 0.3 + l * 0.01 + k * 0.002})
    df = pd.DataFrame(rows)
    df.loc[5, "v"] = np.nan  # a cell without a value stays blank
    df.loc[7, "v"] = 0.001   # about the baseline: a pale cell
    return df


def test_heatmap_writes_every_value_and_label_and_centres_the_diff_map(tmp_path):
    from matplotlib.collections import PathCollection
    from matplotlib.image import BboxImage

    from blockprof.infra import plots

    df = _toy_summary()
    fig = plots.block_heatmaps(df, "v", "toy: mean v - baseline", "v diff [ms]", diverging=True)
    (text,) = [a for a in fig.artists if isinstance(a, PathCollection)]
    values = [f"{v:.3g}" for v in df["v"].dropna()]
    for s in values + ["U0 L0", "U1 L1", "mbconv3_e3_k3", "mbconv3_e6_k7", "toy: mean v - baseline", "v diff [ms]"]:
        assert s in text.strings
    assert len(text.get_paths()) == len(text.strings) and len(text.get_offsets()) == len(text.strings)
    heat = [a for a in fig.artists if isinstance(a, BboxImage)][0]
    vmax = np.nanmax(np.abs(df["v"]))
    assert heat.norm.vmin == pytest.approx(-vmax) and heat.norm.vmax == pytest.approx(vmax)  # centred at 0
    assert heat.get_cmap().name == "RdBu_r"
    # light text on the darkest cells, dark text on the palest
    cells = {s: c for s, c in zip(text.strings, text.get_facecolors())}
    assert cells[f"{df['v'].min():.3g}"][:3].tolist() == [1, 1, 1]
    assert cells["0.001"][:3].tolist() == [0, 0, 0]
    png = tmp_path / "h.png"
    plots.save_png(fig, png)
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    w, h = fig.get_size_inches() * fig.dpi
    assert img.shape == (round(h), round(w)) and img.std() > 20  # drawn at its own size, not blank
    plots.close(fig)


def test_fast_csv_reads_back_like_pandas(tmp_path):
    from blockprof.common.fileio import write_csv

    df = pd.DataFrame({"group": [0, 1, 2], "slot": ["random", "u0l0:mbconv3_e3_k3", None],
                       "unit": [np.nan, 0.0, 4.0], "x": [1e-7, 80.17224395275116, np.inf],
                       "arch": ["a->b|c", "d", "e"]})
    for frame in (df, df.assign(slot=["a,b", "c", "d"]), df.assign(flag=[True, False, True])):
        write_csv(frame, tmp_path / "fast.csv")
        frame.to_csv(tmp_path / "pandas.csv", index=False)
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fast.csv"), pd.read_csv(tmp_path / "pandas.csv"))
    assert (tmp_path / "fast.csv").read_text().splitlines()[0] == ",".join(df.columns) + ",flag"
