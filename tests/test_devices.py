"""Devices of one's own: identity, coverage read from the tables, per-device cost scale,
devices side by side. Every table here is derived from OFA's real Note10 tables."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import blockprof
from blockprof.app.device import device_costs
from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.core.registry import build_space
from blockprof.metrics.lut import note10_key, note10_latency

from conftest import SHARED_ASSETS, run_cli

NOTE10 = SHARED_ASSETS / "ofa" / "note10"


def _table(r: int) -> dict:
    with open(NOTE10 / f"{r}_lookup_table.yaml") as f:
        return yaml.safe_load(f)


def _layers(space, r):
    """Every layer of the space at r, by position: (fixed variant / slot, choice) -> layers."""
    out = {}
    for f in range(space.n_fixed_variants):
        before, after = space.fixed_layers(r, f)
        out[("fixed", f)] = before + after
    for s in range(space.n_slot_positions):
        for c in range(space.n_slot_choices):
            out[(s, c)] = space.choice_layers(r, s, c)[0]
    return out


def _w10_table(folder: Path, r: int, scale: float = 1.0) -> dict:
    """A Note10-format table for the w1.0 supernet: every w1.0 layer's key (the key encodes
    its channels) with the entry of the same position in the real w1.2 table."""
    w12, w10, real = build_space("mbv3"), build_space("mbv3_w10"), _table(r)
    out = {}
    for pos, mine in _layers(w10, r).items():
        for a, b in zip(mine, _layers(w12, r)[pos]):
            out[note10_key(a)] = {"mean": real[note10_key(b)]["mean"] * scale, "std": 0.0, "count": 1}
    assert f"Conv-input:{r}x{r}x3-output:{(r + 1) // 2}x{(r + 1) // 2}x16" in out  # w1.0's stem: 16 channels, w1.2's: 24
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{r}_lookup_table.yaml").write_text(yaml.safe_dump(out))
    return out


def _device(conf: Path, name: str, body: str) -> Path:
    (conf / "device").mkdir(parents=True, exist_ok=True)
    (conf / "device" / f"{name}.yaml").write_text(
        f"defaults:\n  - /schema/device/latency/lut@latency\n  - _self_\nname: {name}\n{body}")
    return conf


# ------------------------------------------------------------------ coverage from the data
def test_a_w10_note10_format_table_works_by_yaml_alone(tmp_path):
    table = _w10_table(tmp_path / "w10", 224)
    conf = _device(tmp_path / "myconf", "myphone", f"latency:\n  table: {tmp_path / 'w10'}\n")
    res = run_cli(["--config-dir", str(conf), "device=myphone", "space=mbv3_w10", "space.resolutions=[224]",
                   "metric=efficiency", "debug=one_slot", "tracking=none", f"paths.output_root={tmp_path}/out"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (summary,) = (tmp_path / "out" / "runs" / "profile" / "mbv3_w10-myphone").glob("*/summary.csv")
    assert "latency_mean" in summary.read_text().splitlines()[0]
    # the value is the hand sum of the generated entries
    cfg = blockprof.compose(["device=myphone", "space=mbv3_w10", "space.resolutions=[224]", "metric=efficiency",
                             f"paths.output_root={tmp_path}/out"], config_dir=str(conf))
    space = build_space("mbv3_w10", resolutions=[224])
    arch = space.sample(np.random.default_rng(1), 1)[0]
    want = sum(table[note10_key(x)]["mean"] for x in space.layers(arch))
    assert blockprof.score(cfg, [arch])["latency"][0] == pytest.approx(want, rel=1e-12)
    # the same folder for pn: one line naming the first layer it lacks
    cfg = blockprof.compose(["device=myphone", "space=pn", "space.resolutions=[224]", "metric=efficiency"],
                            config_dir=str(conf))
    with pytest.raises(UserError, match=re.escape("device myphone has no latency lookup table for space pn")) as e:
        blockprof.score(cfg, [])
    assert "first missing layer 'Conv-input:224x224x3-output:112x112x40'" in str(e.value)


def test_a_192_to_224_px_table_serves_those_resolutions_only(tmp_path):
    folder = tmp_path / "hi"
    folder.mkdir()
    for r in (192, 208, 224):
        shutil.copy(NOTE10 / f"{r}_lookup_table.yaml", folder)
    conf = _device(tmp_path / "myconf", "hires", f"latency:\n  table: {folder}\n")
    cfg = blockprof.compose(["device=hires", "space.resolutions=[192,224]", "metric=efficiency"],
                            config_dir=str(conf))
    space = build_space("mbv3", resolutions=[192, 224])
    archs = space.sample(np.random.default_rng(2), 30)
    np.testing.assert_array_equal(blockprof.score(cfg, archs)["latency"], note10_latency(space).evaluate(archs))
    cfg = blockprof.compose(["device=hires", "metric=efficiency"], config_dir=str(conf))
    with pytest.raises(UserError, match=re.escape("space mbv3 (mbconv width 1.2) at 160 px: no table for that "
                                                  "resolution")):
        blockprof.score(cfg, [])


def test_a_proxylessnas_format_file_is_detected_and_transferred_by_declaration(tmp_path):
    """ProxylessNAS's single-file table (format read from its keys): pn (w1.3, 160-224 px)
    only through the declared MAC transfer, exactly as note10 serves pn."""
    shutil.copy(SHARED_ASSETS / "proxylessnas" / "mobile_trim.yaml", tmp_path / "pixel1.yaml")
    conf = _device(tmp_path / "myconf", "pixel1", f"latency:\n  table: {tmp_path / 'pixel1.yaml'}\n")
    cfg = blockprof.compose(["device=pixel1", "space=pn", "metric=efficiency"], config_dir=str(conf))
    with pytest.raises(UserError, match=re.escape("space pn (mbconv width 1.3) at 160 px: no table for that "
                                                  "resolution in ") + r".*\(proxyless keys, 224 px\)"):
        blockprof.score(cfg, [])
    cfg = blockprof.compose(["device=pixel1", "space=pn", "space.resolutions=[224]", "metric=efficiency"],
                            config_dir=str(conf))
    with pytest.raises(UserError, match=re.escape("first missing layer 'Conv-input:224x224x3-output:112x112x40'")):
        blockprof.score(cfg, [])
    cfg = blockprof.compose(["device=pixel1", "space=pn", "device.latency.transfer=macs", "metric=efficiency"],
                            config_dir=str(conf))
    pn = build_space("pn")
    archs = pn.sample(np.random.default_rng(4), 40)
    n10 = blockprof.score(blockprof.compose(["space=pn", "metric=efficiency"]), archs)["latency"]
    np.testing.assert_array_equal(blockprof.score(cfg, archs)["latency"], n10)


def test_a_space_the_device_does_not_cover_is_one_line_exit_2(tmp_path):
    res = run_cli(["space=resnet50", "debug=one_slot", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert err[0].startswith("error: device note10 has no latency lookup table for space resnet50 (spaces with "
                             "one: mbv3, pn): none of its 2 tables holds it: space resnet50 (resnet) at 128 px")
    assert not (tmp_path / "out" / "runs").exists()
    # without latency in the metric set the device's tables are not needed
    cfg = blockprof.compose(["space=resnet50", "metric=no_latency"])
    assert set(blockprof.metrics_for(cfg)) == {"accuracy", "mmacs", "params_m"}


# ------------------------------------------------------------------ identity
def test_device_name_alone_cannot_relabel_a_run(tmp_path):
    res = run_cli(["device.name=myphone", "debug=one_slot", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert err[0].startswith("error: device.name=myphone would label device=note10's latencies as myphone's")
    # Hydra made the run folder before the check; it is gone, and nothing was written
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() or "myphone" in p.name]
    for overrides in (["device.name=myphone"], ["device=cpu", "device.name=note10"]):
        with pytest.raises(UserError, match="a device's name is its option"):
            blockprof.compose(overrides)
    # a device file that names itself after another device is refused too
    conf = _device(tmp_path / "myconf", "mypi", "latency:\n  table: asset:ofa/note10\n")
    (conf / "device" / "mypi.yaml").write_text((conf / "device" / "mypi.yaml").read_text()
                                               .replace("name: mypi", "name: note10"))
    with pytest.raises(UserError, match="device option mypi names itself 'note10'"):
        blockprof.compose(["device=mypi"], config_dir=str(conf))


# ------------------------------------------------------------------ cost scale
def test_search_budgets_come_from_the_device(tmp_path):
    """A phone three times slower than the Note10: the Note10's 15-30 ms budgets would be
    below every arch; the derived ones lie inside its latencies."""
    for r in (160, 176, 192, 208, 224):
        _w10_table(tmp_path / "slow", r, scale=3.0)
    conf = _device(tmp_path / "myconf", "slowphone", f"latency:\n  table: {tmp_path / 'slow'}\n")
    cfg = blockprof.compose(["device=slowphone", "space=mbv3_w10", "metric=efficiency"], config_dir=str(conf))
    space = build_space("mbv3_w10")
    lat = blockprof.metrics_for(cfg)["latency"]
    costs = device_costs(cfg, space, lat)
    sample = lat.evaluate(space.sample(np.random.default_rng(5), 500))
    assert costs.origin.startswith("derived from 2000 seeded archs of mbv3_w10 on slowphone")
    assert len(costs.cost_limits) == 4 and sample.min() < costs.cost_limits[0] < costs.cost_limits[-1] < sample.max()
    assert costs.hv_reference > sample.max() > 30
    # a search on it aims there (mmacs-free mbv3 w1.2 table device: accuracy predictor available)
    for r in (160, 176, 192, 208, 224):
        real = _table(r)
        (tmp_path / "slow12").mkdir(exist_ok=True)
        (tmp_path / "slow12" / f"{r}_lookup_table.yaml").write_text(
            yaml.safe_dump({k: {"mean": v["mean"] * 3} for k, v in real.items()}))
    _device(conf, "slow12", f"latency:\n  table: {tmp_path / 'slow12'}\n")
    cfg = blockprof.compose(["device=slow12", "task=search", "search=bands", "search.budget=250",
                             "search.init_size=100", "search.budget_per_iter=50", "search.plot=false",
                             "tracking=none", f"paths.output_root={tmp_path}/out"], config_dir=str(conf))
    res = execute(cfg, run_dir=tmp_path / "run")
    limits, ref = res["strategy"].limits, res["strategy"].hv_ref[1]
    assert min(limits) > 30 and ref > res["scored"]["latency"].max()
    # note10 keeps its own numbers for mbv3
    n10 = device_costs(blockprof.compose([]), build_space("mbv3"))
    assert (n10.hv_reference, n10.cost_limits, n10.origin) == (70.0, [15.0, 20.0, 25.0, 30.0], "device file")


# ------------------------------------------------------------------ devices side by side
def test_compare_checks_every_device_before_profiling_any(tmp_path, capsys):
    from blockprof.compare import run as compare

    out = tmp_path / "cmp"
    assert compare(["--devices", "note10", "iphone", "--archs", "2", "--out", str(out)]) == 2
    assert "error: device iphone: unknown device 'iphone'" in capsys.readouterr().err
    assert not out.exists()
    # a measured device without a predictor is timed only when asked
    assert compare(["--devices", "note10", "ort_cpu", "--archs", "2", "--out", str(out),
                    "--set", f"paths.data_dir={tmp_path}/data"]) == 2
    assert "or give --time" in capsys.readouterr().err and not out.exists()
    # a --config-dir device that does not cover the space is found before note10 is profiled
    conf = _device(tmp_path / "myconf", "w10phone", f"latency:\n  table: {tmp_path / 'w10'}\n")
    _w10_table(tmp_path / "w10", 224)
    assert compare(["--devices", "note10", "w10phone", "--config-dir", str(conf), "--archs", "2",
                    "--out", str(out)]) == 2
    assert "device w10phone has no latency lookup table for space mbv3" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ the README's walk-through
def test_readme_own_device_walkthrough_runs_as_written(tmp_path, monkeypatch):
    """Both device files of the README's "Your own device" section, as written, in a
    config folder under a stand-in home: the table device profiles, the engine device builds."""
    from conftest import REPO

    section = (REPO / "README.md").read_text().split("### Your own device", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"```yaml\n# ~/myconf/device/(\w+)\.yaml\n(.*?)```", section, re.S)
    assert [name for name, _ in files] == ["myphone", "mybox"]
    home = tmp_path / "home"
    (home / "myconf" / "device").mkdir(parents=True)
    for name, body in files:
        (home / "myconf" / "device" / f"{name}.yaml").write_text(body)
    (home / "myphone_tables").mkdir()
    for r in (160, 176, 192, 208, 224):
        (home / "myphone_tables" / f"{r}_lookup_table.yaml").symlink_to(NOTE10 / f"{r}_lookup_table.yaml")
    monkeypatch.setenv("HOME", str(home))
    res = run_cli(["--config-dir", str(home / "myconf"), "device=myphone", "debug=one_slot", "tracking=none",
                   f"paths.output_root={tmp_path}/out"], cwd=tmp_path, env={"HOME": str(home)})
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "out" / "runs" / "profile" / "mbv3-myphone").glob("*/summary.csv"))
    cfg = blockprof.compose(["device=mybox", "metric.names=[latency]", "device.latency.source=measured"],
                            config_dir=str(home / "myconf"))
    lat = blockprof.metrics_for(cfg)["latency"]  # the protocol's checks run here (4 threads need the wall clock)
    assert (lat.threads, lat.proto.clock, lat.engine.name) == (4, "wall", "onnxruntime")
