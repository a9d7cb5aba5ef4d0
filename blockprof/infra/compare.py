"""Compare the runs of a sweep: one pandas table and side-by-side plots, from MLflow.

    python -m blockprof.compare --sweep outputs/multirun/<time>        # a sweep folder
    python -m blockprof.compare --sweep latest                          # the newest sweep
    python -m blockprof.compare --sweep A --sweep B --metric accuracy   # several sweeps together
    python -m blockprof.compare --sweep latest --uri http://mlflow.example.org:5000

Runs are found by their ``sweep`` tag (the sweep folder, absolute, as blockprof's
tracking sets it for every multirun job). Written to ``--out`` (default
``<output_root>/compare/<sweep name>``):

* ``runs.csv`` — one row per run: ids, status, the blockprof tags (task, space, device,
  search ...), the params that differ between the runs, and the last value of every metric;
* ``heatmaps_<space>_<metric>.png`` — for profile runs: the mean-value heatmaps
  (unit-layer x block) of every run of a space side by side, one panel per device
  (and per job when a device has several), on one colour scale;
* ``fronts_<space>_<device>_<cost>.png`` — for search runs: their final Pareto fronts
  (``front.csv``) overlaid, one line per run.

The tracking store defaults to the project's: ``--uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<output_root>/mlflow.db``.

Devices side by side (no MLflow needed): one space's latency heatmaps for several
devices next to each other, and the rank correlation of the slot-latency means
between every pair of devices (block preferences differ per device):

    python -m blockprof.compare --devices local_cpu ort_cpu openvino_cpu note10 --archs 20
    python -m blockprof.compare --profile-run outputs/runs/profile/mbv3-ort_cpu/<time> --profile-run ...

``--devices`` checks every device first (an unknown device, or a space it does not cover,
stops before anything is profiled), then profiles each (``task=profile
metric.names=[latency]``, every slot, ``--archs`` archs per slot, through the blockprof
command; ``--config-dir`` devices too). A measured device is profiled through its
predictor when one exists for (space, device) and timed directly only with ``--time``;
each panel's title says where its latency came from. Extra ``--set key=value``
overrides go to every profile, ``--set <device>:key=value`` to one, e.g.
``--set ort_cpu:device.latency.source=predictor`` to use the predictor trained on that
device's task=measure CSV); ``--profile-run`` takes finished
profile run folders (their ``summary.csv``). Written to ``--out``: ``devices_<space>.png``,
``device_rank_correlation.csv`` and ``.md`` (Spearman over the single-slot means).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from blockprof.common.errors import UserError
from blockprof.infra.plots import block_label

TAG_COLUMNS = ("task", "space", "device", "metrics", "search", "search.strategy", "search.insight", "search.cost",
               "shard", "sweep", "sweep_job", "overrides", "git_commit")
PROFILE_TASKS = ("profile", "merge_profile")
BASELINE = "random"  # blockprof.profiling.BASELINE (imported lazily there: it pulls in torch)


# ------------------------------------------------------------------ finding runs
def default_uri(output_root: str | os.PathLike = "outputs") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from blockprof.infra.tracking import _quiet_store_logs

    _quiet_store_logs()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri} (give --uri or --output-root)")
    return MlflowClient(tracking_uri=uri)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _search(client, exp_ids, filter_string: str, order_by=None, limit: int | None = None) -> list:
    runs, token = [], None
    exp_ids = [exp_ids] if isinstance(exp_ids, str) else list(exp_ids)
    while True:
        page = client.search_runs(exp_ids, filter_string=filter_string, max_results=limit or 1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs


def _sweep_ids(client, sweep: str) -> list[str]:
    """The ``sweep`` tag values a sweep folder may carry: relative to the output root (a local
    store lives there; the current folder for a server's), and absolute (older runs)."""
    path = Path(sweep).expanduser()
    if not path.exists():
        return [sweep]
    path = path.resolve()
    bases = [Path.cwd()]
    uri = str(client.tracking_uri)
    if uri.startswith("sqlite:///"):
        bases.insert(0, Path(uri[len("sqlite:///"):]).resolve().parent)
    out = [Path(os.path.relpath(path, base)).as_posix() for base in bases]
    return [*dict.fromkeys(out), str(path)]


def resolve_sweep(client, exp_ids: list[str], sweep: str) -> list[str]:
    """The ``sweep`` tag values for a sweep folder, ``latest``, or a tag value."""
    if sweep == "latest":
        runs = _search(client, exp_ids, "tags.sweep != ''", order_by=["attributes.start_time DESC"], limit=1)
        if not runs:
            raise UserError("no sweep runs in this experiment (run a multirun: python run.py -m ...)")
        return [runs[0].data.tags["sweep"]]
    return _sweep_ids(client, sweep)


def sweep_runs(client, experiment: str, sweeps: list[str]) -> list:
    """The runs of the sweeps, in the experiment ``experiment`` and its per-task ones
    (``<experiment>/<task>``)."""
    from blockprof.infra.tracking import experiment_names

    exps = experiment_names(client, experiment)
    if not exps:
        raise UserError(f"no MLflow experiment '{experiment}' in {client.tracking_uri}")
    ids = [e.experiment_id for e in exps]
    runs = []
    for s in sweeps:
        tags = resolve_sweep(client, ids, s)
        found = []
        for tag in tags:
            found = _search(client, ids, f"tags.sweep = {_quote(tag)}")
            if found:
                break
        if not found:
            raise UserError(f"no runs tagged sweep={tags[0]} in experiment '{experiment}' at {client.tracking_uri}"
                            " (if their tracking failed: python -m blockprof.sync <sweep folder>)")
        runs.extend(found)
    return runs


# ------------------------------------------------------------------ the table
def runs_table(runs: list) -> pd.DataFrame:
    """One row per run: ids, status, blockprof tags, differing params (``param.*``), metrics."""
    rows, params = [], []
    for r in runs:
        t = r.data.tags
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
               "start_time": pd.to_datetime(r.info.start_time, unit="ms")}
        row.update({c: t.get(c) for c in TAG_COLUMNS})
        row.update({k: v for k, v in t.items() if k.startswith("unit.")})
        row.update({m: v for m, v in sorted(r.data.metrics.items())})
        rows.append(row)
        params.append(r.data.params)
    df = pd.DataFrame(rows)
    keys = sorted({k for p in params for k in p})
    varying = [k for k in keys if len({p.get(k) for p in params}) > 1]
    for k in varying:
        df[f"param.{k}"] = [p.get(k) for p in params]
    df["sweep_job"] = pd.to_numeric(df["sweep_job"], errors="coerce").astype("Int64")
    df = df.dropna(axis=1, how="all")
    return df.sort_values(["sweep", "sweep_job", "start_time"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ artifacts
def fetch_csv(client, run_id: str, name: str, dst: Path) -> pd.DataFrame | None:
    """An artifact CSV of a run (None when the run has none)."""
    from mlflow.artifacts import download_artifacts

    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    path = download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst / run_id),
                              tracking_uri=client.tracking_uri)
    return pd.read_csv(path)


def _overrides(row) -> set[str]:
    return {o for o in str(row.get("overrides") or "").split(",")
            if o and not o.startswith(("space=", "device=", "task=", "search=", "paths.", "hydra"))}


def _label(row: pd.Series, grp: pd.DataFrame, lead: str = "device") -> str:
    """A short panel/line label: ``lead`` (device), then what differs between the runs of
    ``grp`` (strategy, insight, overrides), then the job number."""
    parts = [str(row.get(lead))] if lead else []
    for key in ("search.strategy", "search.insight"):
        if key in grp and grp[key].nunique() > 1 and isinstance(row.get(key), str):
            parts.append(row[key])
    common = set.intersection(*(_overrides(r) for _, r in grp.iterrows())) if len(grp) else set()
    parts.extend(sorted(_overrides(row) - common)[:3])
    if pd.notna(row.get("sweep_job")):
        parts.append(f"job {row['sweep_job']}")
    if not lead:
        return ", ".join(parts) or str(row.get("run_name"))
    return parts[0] + ("\n" + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _grid(summary: pd.DataFrame, col: str):
    """Single-slot rows of a profile summary as (rows, blocks, grid); sampled-resolution rows
    when present, else the largest fixed resolution."""
    s = summary[(summary["block"] != BASELINE) & summary["unit"].notna()
                & ~summary["block"].astype(str).str.contains(r"\+")]
    if "resolution" in s and s["resolution"].notna().all() and len(s):
        s = s[s["resolution"] == s["resolution"].max()]
    elif "resolution" in s:
        s = s[s["resolution"].isna()]
    rows = sorted({(int(u), int(lay)) for u, lay in zip(s["unit"], s["layer"])})
    blocks = list(dict.fromkeys(s["block"]))
    grid = np.full((len(rows), len(blocks)), np.nan)
    ri, ci = {r: i for i, r in enumerate(rows)}, {b: i for i, b in enumerate(blocks)}
    for u, lay, b, v in zip(s["unit"], s["layer"], s["block"], s[col]):
        grid[ri[(int(u), int(lay))], ci[b]] = v
    return rows, blocks, grid


def plot_heatmaps(space: str, metric: str, panels: list[tuple[str, pd.DataFrame]], unit: str | None = None,
                  shared: bool | None = None):
    """Side-by-side mean-value heatmaps of one space, one panel per run. One colour scale
    when the panels' values are of one magnitude (MACs, accuracy), else one per panel
    (latency on a phone table and on a CPU differ by 10x: each panel shows its pattern)."""
    from blockprof.infra.plots import plt

    col = f"{metric}_mean"
    grids = [(label, *_grid(s, col)) for label, s in panels if col in s]
    grids = [g for g in grids if np.isfinite(g[3]).any()]
    if not grids:
        return None
    meds = [float(np.nanmedian(np.abs(g[3]))) for g in grids]
    if shared is None:
        shared = min(meds) > 0 and max(meds) / min(meds) <= 2 or max(meds) == 0
    vals = np.concatenate([g[3][np.isfinite(g[3])] for g in grids])
    n_rows = max(len(g[1]) for g in grids)
    n_cols = max(len(g[2]) for g in grids)
    fig, axes = plt.subplots(1, len(grids), squeeze=False, layout="constrained",
                             figsize=(1.0 + (0.42 * n_cols + 1.6) * len(grids), 2.2 + 0.3 * n_rows))
    im = None
    for ax, (label, rows, blocks, grid) in zip(axes[0], grids):
        lim = dict(vmin=float(vals.min()), vmax=float(vals.max())) if shared else {}
        im = ax.imshow(grid, aspect="auto", cmap="viridis", **lim)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([block_label(b) for b in blocks], rotation=60,
                           ha="right", fontsize=6)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"U{u} L{lay}" for u, lay in rows], fontsize=6)
        ax.set_title(label, fontsize=8)
        if not shared:
            fig.colorbar(im, ax=ax, fraction=0.08).ax.tick_params(labelsize=6)
    if shared:
        cb = fig.colorbar(im, ax=list(axes[0]), fraction=0.03)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(f"mean {metric}" + (f" [{unit}]" if unit else ""), fontsize=7)
    scale = "one colour scale" if shared else "a colour scale per panel"
    fig.suptitle(f"{space}: mean {metric}{f' [{unit}]' if unit else ''} per block and position ({scale})",
                 fontsize=10)
    return fig


def plot_fronts(title: str, cost: str, fronts: list[tuple[str, pd.DataFrame]], unit: str | None = None):
    """Final Pareto fronts of several search runs overlaid (accuracy vs cost)."""
    from blockprof.infra.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, front in fronts:
        f = front.sort_values(cost)
        line, = ax.step(f[cost], f["accuracy"], where="post", lw=1.2, label=f"{label} ({len(f)})")
        ax.scatter(f[cost], f["accuracy"], s=10, color=line.get_color())
    ax.set_xlabel(f"{cost} [{unit}]" if unit else cost)
    ax.set_ylabel("accuracy [%]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------ devices side by side
def _single_slot_means(summary: pd.DataFrame, metric: str = "latency") -> pd.Series:
    """Mean `metric` per single slot (unit, layer, block), indexed by the slot label."""
    s = summary[(summary["block"] != BASELINE) & summary["unit"].notna()
                & ~summary["block"].astype(str).str.contains(r"\+")]
    if "resolution" in s and s["resolution"].notna().any():
        s = s[s["resolution"] == s["resolution"].max()]
    return pd.Series(s[f"{metric}_mean"].to_numpy(float), index=s["slot"].astype(str).to_numpy())


def device_rank_correlation(panels: list[tuple[str, pd.DataFrame]], metric: str = "latency",
                            within_position: bool = False) -> pd.DataFrame:
    """Spearman rank correlation of the single-slot means between every pair of panels
    (on the slots both profiled). `within_position`: the blocks' order at each position
    (unit, layer) instead, averaged over positions - which block is cheaper where, with
    the position's own cost taken out."""
    from scipy.stats import spearmanr

    means = {label: _single_slot_means(s, metric) for label, s in panels}
    labels = list(means)
    out = pd.DataFrame(np.nan, index=labels, columns=labels)
    for a in labels:
        for b in labels:
            common = means[a].index.intersection(means[b].index)
            if len(common) < 3:
                continue
            if not within_position:
                out.loc[a, b] = float(spearmanr(means[a][common], means[b][common])[0])
                continue
            pos = pd.Series([c.split(":")[0] for c in common], index=common)
            rhos = [spearmanr(means[a][idx], means[b][idx])[0] for _, idx in pos.groupby(pos).groups.items()
                    if len(idx) >= 3]
            rhos = [r for r in rhos if np.isfinite(r)]
            out.loc[a, b] = float(np.mean(rhos)) if rhos else np.nan
    return out


def _markdown(corr: pd.DataFrame, title: str) -> list[str]:
    lines = [f"| {title} | " + " | ".join(corr.columns) + " |", "|---" * (len(corr.columns) + 1) + "|"]
    return lines + [f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                    for i, row in zip(corr.index, corr.to_numpy())]


def profile_devices(devices: list[str], space: str, archs: int, out: Path, sets: list[str],
                    config_dir: str | None = None, extra: dict[str, list[str]] | None = None) -> list[Path]:
    """A latency-only block profile per device through the blockprof command; the run folders.
    `extra` holds per-device overrides decided by the caller's checks (e.g. use the predictor)."""
    import subprocess

    dirs = []
    for d in devices:
        run_dir = (out / "profiles" / f"{space}-{d}").resolve()
        # `key=value` goes to every device, `device:key=value` to that device only
        mine = [x.split(":", 1)[1] if ":" in x.split("=", 1)[0] else x for x in sets
                if ":" not in x.split("=", 1)[0] or x.split(":", 1)[0] == d]
        cmd = [sys.executable, "-m", "blockprof.cli", *(["--config-dir", str(config_dir)] if config_dir else []),
               "task=profile", f"space={space}", f"device={d}",
               "metric.names=[latency]", f"task.num_archs={archs}", "tracking=none", f"hydra.run.dir={run_dir}",
               *(extra or {}).get(d, []), *mine]
        print(f"compare: profiling {space} on {d} ({archs} archs per slot) -> {run_dir}", flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise UserError(f"profiling {space} on device {d} failed (exit {r.returncode}); command: {' '.join(cmd)}")
        dirs.append(run_dir)
    return dirs


def _run_label(run_dir: Path) -> tuple[str, str]:
    """(space, device) of a profile run folder, from its Hydra config (else the folder name)."""
    cfg = run_dir / ".hydra" / "config.yaml"
    if cfg.is_file():
        import yaml
        c = yaml.safe_load(cfg.read_text())
        return str(c["space"]["name"]), str(c["device"]["name"])
    name = run_dir.name if "-" in run_dir.name else run_dir.parent.name
    sp, _, dev = name.partition("-")
    return sp, dev or name


def compare_devices(run_dirs: list[Path], out: Path, metric: str = "latency",
                    sources: dict[str, str] | None = None) -> dict:
    """Side-by-side heatmaps and the device rank-correlation table of profile run folders;
    `sources` (device -> where its latency came from) goes into each panel's title."""
    from blockprof.infra.plots import close

    panels, spaces = [], set()
    for d in run_dirs:
        d = Path(d)
        if not (d / "summary.csv").is_file():
            raise UserError(f"{d} holds no summary.csv (not a finished profile run folder)")
        summary = pd.read_csv(d / "summary.csv")
        if f"{metric}_mean" not in summary:
            raise UserError(f"{d / 'summary.csv'} has no {metric} column (profile with metric.names=[{metric}])")
        sp, dev = _run_label(d)
        spaces.add(sp)
        n = int(summary["n"].iloc[0]) if "n" in summary else 0
        src = (sources or {}).get(dev)
        panels.append((f"{dev} ({n} archs/slot{', ' + src if src else ''})", summary))
    if len(spaces) != 1:
        raise UserError(f"the profiles are of several spaces {sorted(spaces)}; compare one space at a time")
    space = spaces.pop()
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_heatmaps(space, metric, panels, "ms", shared=False)  # devices: each one's own pattern
    fig_path = out / f"devices_{_safe(space)}.png"
    fig.savefig(fig_path, dpi=110, bbox_inches="tight")
    close(fig)
    corr = device_rank_correlation(panels, metric)
    within = device_rank_correlation(panels, metric, within_position=True)
    both = pd.concat({"all_slots": corr, "within_position": within})
    both.to_csv(out / "device_rank_correlation.csv", float_format="%.3f")
    md = (_markdown(corr, "Spearman of slot means, all slots") + [""]
          + _markdown(within, "Spearman of block means within each position (mean over positions)"))
    (out / "device_rank_correlation.md").write_text("\n".join(md) + "\n")
    return {"figure": fig_path, "correlation": corr, "markdown": "\n".join(md), "out": out}


# ------------------------------------------------------------------ the command
def _unit(grp: pd.DataFrame, metric: str) -> str | None:
    col = f"unit.{metric}"
    units = grp[col].dropna().unique() if col in grp else []
    return str(units[0]) if len(units) == 1 else None


def _safe(s) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def compare(sweeps: list[str], uri: str, experiment: str = "blockprof", out: Path | None = None,
            metrics: list[str] | None = None, output_root: str | os.PathLike = "outputs") -> dict:
    """Build the table and the figures; returns {"table": DataFrame, "files": [paths], "out": Path}."""
    from blockprof.infra.plots import close

    client = _client(uri)
    runs = sweep_runs(client, experiment, sweeps)
    table = runs_table(runs)
    if out is None:
        name = _safe(Path(str(table["sweep"].iloc[0])).name) if len(set(table["sweep"])) == 1 else "sweeps"
        out = Path(output_root) / "compare" / name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "runs.csv"]
    table.to_csv(files[0], index=False)
    with tempfile.TemporaryDirectory(prefix="blockprof-compare-") as tmp:
        tmp = Path(tmp)
        prof = table[table["task"].isin(PROFILE_TASKS)] if "task" in table else table.iloc[:0]
        for space, grp in prof.groupby("space", sort=True):
            grp = grp.sort_values(["device", "sweep_job"], kind="stable")
            panels = []
            for _, row in grp.iterrows():
                summary = fetch_csv(client, row["run_id"], "summary.csv", tmp)
                if summary is not None:
                    panels.append((_label(row, grp), summary))
            names = metrics or [str(m) for m in str(grp["metrics"].iloc[0] or "").split(",") if m]
            for m in names:
                fig = plot_heatmaps(str(space), m, panels, _unit(grp, m))
                if fig is None:
                    continue
                path = out / f"heatmaps_{_safe(space)}_{_safe(m)}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                close(fig)
                files.append(path)
        srch = table[table["task"] == "search"] if "task" in table else table.iloc[:0]
        for (space, device), grp in srch.groupby(["space", "device"], sort=True):
            by_cost: dict[str, list] = {}
            for _, row in grp.iterrows():
                front = fetch_csv(client, row["run_id"], "front.csv", tmp)
                cost = row.get("search.cost")
                if front is not None and isinstance(cost, str) and cost in front and "accuracy" in front:
                    by_cost.setdefault(cost, []).append((_label(row, grp, lead=""), front))
            for cost, fronts in by_cost.items():
                fig = plot_fronts(f"{space} on {device}: final fronts of {len(fronts)} search runs", cost, fronts,
                                  _unit(grp, cost))
                path = out / f"fronts_{_safe(space)}_{_safe(device)}_{_safe(cost)}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                close(fig)
                files.append(path)
    return {"table": table, "files": files, "out": out}


def main(argv: list[str] | None = None, plan_devices=None) -> int:
    """The command. `plan_devices(devices, space, sets, config_dir, time_directly)` checks
    every --devices device before any is profiled and returns, per device, the overrides
    and the latency source to use (blockprof.app.device_plan, passed in by the
    `python -m blockprof.compare` entry: this layer does not compose configs)."""
    ap = argparse.ArgumentParser(prog="python -m blockprof.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", action="append",
                    help="a sweep folder, its tag value, or 'latest' (repeat for several)")
    ap.add_argument("--devices", nargs="+", help="devices side by side: profile each of these first")
    ap.add_argument("--profile-run", action="append", help="devices side by side: a finished profile run folder")
    ap.add_argument("--space", default="mbv3", help="space for --devices (default mbv3)")
    ap.add_argument("--archs", type=int, default=20, help="archs per slot for --devices (default 20)")
    ap.add_argument("--set", action="append", default=[],
                    help="extra override for --devices profiles: key=value (all) or device:key=value (one)")
    ap.add_argument("--config-dir", help="a folder of your own config groups (device/<name>.yaml), as for run.py")
    ap.add_argument("--time", action="store_true",
                    help="time measured devices that have no predictor directly (slow: every profiled subnet)")
    ap.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    ap.add_argument("--output-root", default="outputs", help="the runs' paths.output_root (default outputs)")
    ap.add_argument("--experiment", default="blockprof", help="MLflow experiment (default blockprof)")
    ap.add_argument("--metric", action="append", help="heatmap metric(s) (default: every metric of the runs)")
    ap.add_argument("--out", help="output folder (default <output_root>/compare/<sweep name>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.devices or args.profile_run:
        try:
            out = Path(args.out) if args.out else Path(args.output_root) / "compare" / "devices"
            dirs = [Path(p) for p in args.profile_run or []]
            sources: dict[str, str] = {}
            if args.devices:
                extra: dict[str, list[str]] = {}
                if plan_devices is not None:  # every device checked before any is profiled
                    plans = plan_devices(args.devices, args.space, args.set, args.config_dir, args.time)
                    extra = {p.device: p.overrides for p in plans}
                    sources = {p.device: p.source for p in plans}
                dirs += profile_devices(args.devices, args.space, args.archs, out, args.set, args.config_dir, extra)
            res = compare_devices(dirs, out, sources=sources)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(res["markdown"])
        print(f"-> {res['figure']}, {out / 'device_rank_correlation.csv'}")
        return 0
    if not args.sweep:
        print("error: give --sweep, or --devices / --profile-run for devices side by side", file=sys.stderr)
        return 2
    try:
        res = compare(args.sweep, args.uri or default_uri(args.output_root), args.experiment,
                      Path(args.out) if args.out else None, args.metric, args.output_root)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = res["table"]
    show = [c for c in ("sweep_job", "status", "task", "space", "device", "search.strategy") if c in t]
    show += [c for c in t.columns if c.startswith(("baseline_", "hypervolume", "front_size"))][:6]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(t[show].to_string(index=False))
    print(f"{len(t)} runs -> " + ", ".join(str(f) for f in res["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
