"""task=measure: time sampled subnets on this machine (or a board over SSH, or through a
vendor's timing tool: device.latency.via) into a seed-format latency CSV.

    python run.py task=measure space=mbv3 device=local_cpu task.num_archs=2000

Archs are sampled per net_id from the run's seed (the first N ids are the same
whatever N is), resolutions balanced over the space's. Rows are appended as
they are measured; a rerun with the same CSV skips every net_id already there
(and refuses a CSV that was measured from another sample or protocol).

The measurement protocol (1 thread, CPU clock, interleaved rounds over chunks,
reference subnets per round as drift normaliser, median over rounds) lives in
blockprof.metrics.timing and is shared with the measured-latency metric; the
device's `latency.engine` (torch | onnxruntime | openvino) says what runs.
The reference baselines are timed once, at the first session, and kept in
`<csv>.meta.json` so a resumed run stays on the same scale (the dataset's ms
are "as fast as the machine was during calibration").

At the end a seeded sample of measured archs (`retest_archs`) is timed again
in a separate pass with the same protocol; test-retest MAPE and the share
within +-10 % go into `<csv>.meta.json` and MLflow. The raw per-round
timings (references included, as negative net_ids) are kept in
`<csv>.rounds.csv`.
"""
from __future__ import annotations

import logging

import csv
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write_text
from blockprof.core.latency_csv import LatencyCSVWriter, read_latency_csv, seed_field
from blockprof.metrics.measured import engine_label, machine_info, make_timing_engine, timing_clock, timing_via
from blockprof.metrics.timing import ChunkTimer, Protocol, reference_archs
from blockprof.common.progress import phase, progress
from blockprof.core.space import Arch, DesignSpace
from blockprof.infra.tracking import resolve_path
from blockprof.app.task import Task, pick

log = logging.getLogger(__name__)


def sample_archs(space: DesignSpace, base_seed: int, n: int, resolution: int | None = None) -> list[Arch]:
    """Arch i depends only on (base_seed, i): growing N keeps the first archs.
    Resolutions are balanced: each block of len(resolutions) ids holds each once."""
    R = len(space.resolutions)
    out = []
    for i in range(n):
        if resolution is None:
            perm = np.random.default_rng([base_seed, 1, i // R]).permutation(R)
            r = space.resolutions[int(perm[i % R])]
        else:
            r = space.check_resolution(int(resolution))
        out.append(space.sample(np.random.default_rng([base_seed, 0, i]), 1, resolution=r)[0])
    return out


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True), durable=True)


def meta_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".meta.json")


def rounds_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".rounds.csv")


def _checked(ctx):
    """Everything measure needs from the user's input, checked without writing anything
    (`validate` runs it before the run opens; `run` again for its values)."""
    cfg, space = ctx.cfg, ctx.space
    t, lat = cfg.task, cfg.device.latency
    hw = lat.get("hw")
    if hw not in ("cpu", "cuda") and timing_via(lat) == "local":
        raise UserError(f"task=measure times subnets on this machine, a board or a timing tool; device "
                        f"'{cfg.device.name}' times none (use device=local_cpu, ort_cpu, openvino_cpu, local_cuda, "
                        "ssh or command)")
    engine_name = engine_label(lat)
    proto = Protocol(hw=str(hw), threads=int(t.threads if t.get("threads") is not None else lat.get("threads", 1)),
                     warmup=int(t.warmup), rounds=int(t.rounds), chunk_size=int(t.chunk_size),
                     stat=str(t.stat), clock=timing_clock(lat, str(t.clock if hw == "cpu" else "wall")),
                     references=int(t.references), batch_size=int(t.get("batch_size", 1))).check("measure")
    n = int(t.num_archs)
    if n < 1:
        raise UserError(f"task.num_archs must be >= 1, not {t.num_archs}")
    csv_path = resolve_path(t.csv or lat.csv, cfg)
    mpath = meta_path(csv_path)
    meta = json.loads(mpath.read_text()) if mpath.is_file() else None
    if meta is not None:
        if meta.get("space") != space.name:
            raise UserError(f"{csv_path} holds space {meta.get('space')}, not {space.name}; use another task.csv")
        if meta.get("engine", "torch") != engine_name:
            raise UserError(f"{csv_path} was timed with engine {meta.get('engine', 'torch')}, not {engine_name}; "
                            "use another task.csv")
        if not proto.same_data(meta.get("protocol", {})):
            raise UserError(f"{csv_path} was measured with protocol {meta.get('protocol')}; resume it with the same "
                            f"settings or write to another task.csv")
    base_seed = int(np.random.default_rng(cfg.seed).integers(2 ** 31))
    if t.get("archs_csv"):  # time the archs of a list (any format blockprof/core/archlist.py reads)
        from blockprof.core.archlist import read_archs
        archs = read_archs(resolve_path(t.archs_csv, cfg), space)
        n = len(archs)
    else:
        archs = sample_archs(space, base_seed, n, t.get("resolution"))

    seed_field(str(cfg.device.name), "device name")  # a name the seed's CSV reader cannot read back: refused now
    # a CSV of another space or sample; a last line torn by a kill is repaired by the writer
    # in `run`, so only a whole file is read here
    if csv_path.is_file() and csv_path.stat().st_size > 0 and csv_path.read_bytes().endswith(b"\n"):
        _check_existing(read_latency_csv(csv_path, space), archs, n, csv_path, cfg.seed)
    return t, lat, hw, engine_name, proto, n, csv_path, mpath, meta, base_seed, archs


def _check_existing(rows, archs, n, csv_path, seed) -> None:
    for rec in rows:
        if rec.net_id < n and rec.arch != archs[rec.net_id]:
            raise UserError(f"{csv_path}: net_id {rec.net_id} is {rec.arch} but seed {seed} samples "
                            f"{archs[rec.net_id]} there; it was measured from another sample - resume with the "
                            "same seed or use another task.csv")


def run(ctx, tracker):
    cfg, space = ctx.cfg, ctx.space
    t, lat, hw, engine_name, proto, n, csv_path, mpath, meta, base_seed, archs = _checked(ctx)
    # the engine before the CSV: a board or tool that is not usable fails here, leaving no file behind
    engine = make_timing_engine(lat, space, hw=proto.hw, threads=proto.threads, clock=proto.clock,
                                batch_size=proto.batch_size, cache_dir=resolve_path(lat.get("cache_dir") or
                                                                                    "outputs/cache/onnx", cfg))
    writer = LatencyCSVWriter(csv_path, space, device=str(cfg.device.name))
    if writer.done_ids:
        _check_existing(read_latency_csv(csv_path, space), archs, n, csv_path, cfg.seed)
    todo = [i for i in range(n) if i not in writer.done_ids]
    info = {**machine_info(proto.threads, proto.hw), **engine.info()}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta = meta or {"format": "blockprof.measure", "space": space.name, "device": str(cfg.device.name),
                    "engine": engine_name, "seed": int(cfg.seed), "protocol": asdict(proto), "sessions": []}
    session = {"started": now, "machine": info, "loadavg_start": list(os.getloadavg()),
               "requested": n, "already_measured": n - len(todo), "measured": 0}
    meta["sessions"].append(session)
    meta["machine"] = info
    mpath.parent.mkdir(parents=True, exist_ok=True)
    _write_json(mpath, meta)
    tracker.set_tags({f"machine.{k}": v for k, v in info.items()})
    tracker.log_params({f"protocol.{k}": v for k, v in asdict(proto).items()})
    log.info(f"measure: {len(todo)} of {n} archs to time with {engine_name} on {info['cpu']} "
             f"({proto.threads} thread(s)) -> {csv_path}")

    rng = np.random.default_rng([base_seed, 2, len(writer.done_ids)])
    rpath = rounds_path(csv_path)
    new_rounds = not rpath.exists()
    device_name = str(cfg.device.name)
    t0 = time.time()
    refs = reference_archs(space, base_seed, proto.references)
    saved_ref = meta.get("reference") or {}
    if saved_ref and saved_ref.get("archs") != [str(a) for a in refs]:
        raise UserError(f"{mpath}: reference archs differ from seed {cfg.seed}'s; use the same seed or another task.csv")
    with open(rpath, "a", newline="") as rf:
        rw = csv.writer(rf)
        if new_rounds:
            rw.writerow(["net_id", "resolution", "pass"] + [f"t{k}" for k in range(proto.rounds)])

        def log_rounds(ids, archs_, raw, what):
            for i, a, row in zip(ids, archs_, raw):
                rw.writerow([int(i), a.resolution, what] + [f"{x:.4f}" for x in row])

        timer = ChunkTimer(engine, proto, refs, saved_ref.get("baseline_ms"), rng, log_rounds)
        if refs and not saved_ref:  # a resumed CSV keeps its first session's baselines
            with phase("measure: calibration", len(refs) * 3 * proto.rounds, "timed reference runs"):
                timer.calibrate()
        else:
            timer.calibrate()
        if refs and not saved_ref:
            meta["reference"] = {"archs": [str(a) for a in refs], "baseline_ms": timer.baseline,
                                 "calibration_ms": timer.calibration_ms,
                                 "calibrated": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _write_json(mpath, meta)
        factors = []
        bar = progress(None, desc="measure", total=len(todo), unit="archs timed")
        for c in range(0, len(todo), proto.chunk_size):
            ids = todo[c:c + proto.chunk_size]
            vals, factor = timer([archs[i] for i in ids], ids, "measure")
            factors.append(factor)
            rf.flush()
            for i, v in zip(ids, vals):
                writer.append(i, archs[i], device_name, float(v))
            session["measured"] += len(ids)
            load = os.getloadavg()[0]
            session["loadavg1_max"] = max(session.get("loadavg1_max", 0.0), load)
            session["loadavg1_sum"] = session.get("loadavg1_sum", 0.0) + load * len(ids)
            bar.update(len(ids))
            tracker.log_metrics({"measured": len(writer.done_ids), "drift_factor": factor}, step=len(writer.done_ids))
        bar.close()
        if factors:
            session["drift_factor"] = {"min": min(factors), "median": float(np.median(factors)), "max": max(factors)}

        retest = _retest(space, csv_path, proto, int(t.retest_archs), base_seed, timer)
    if session["measured"]:
        session["loadavg1_mean"] = round(session.pop("loadavg1_sum") / session["measured"], 2)
    session.update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0, 1),
                    "loadavg_end": list(os.getloadavg())})
    if retest:
        meta["retest"] = retest
        session["retest"] = retest
    meta["rows"] = len(writer.done_ids)
    _write_json(mpath, meta)
    if retest:
        tracker.log_metrics({k: v for k, v in retest.items() if isinstance(v, (int, float))})
        log.info(f"measure: test-retest on {retest['retest_n']:.0f} archs: MAPE {retest['retest_mape']:.2f} %, "
              f"{retest['retest_within10']:.1f} % within +-10 %")
    tracker.log_metrics({"rows": len(writer.done_ids), "seconds": time.time() - t0})
    tracker.log_artifact(mpath)
    tracker.log_artifact(csv_path)
    log.info(f"measure: {len(writer.done_ids)} rows in {csv_path}")
    return {"csv": csv_path, "meta": meta}


def _retest(space, csv_path, proto, k, base_seed, timer: ChunkTimer) -> dict | None:
    """Time a seeded sample of the CSV's archs again, in a separate pass."""
    if k <= 0:
        return None
    from blockprof.predictors.report import retest_noise
    recs = read_latency_csv(csv_path, space)
    if not recs:
        return None
    rng = np.random.default_rng([base_seed, 3, len(recs)])
    pick = sorted(rng.choice(len(recs), size=min(k, len(recs)), replace=False).tolist())
    chosen = [recs[i] for i in pick]
    again = []
    bar = progress(None, desc="measure: re-test", total=len(chosen), unit="archs timed again")
    for c in range(0, len(chosen), proto.chunk_size):
        part = chosen[c:c + proto.chunk_size]
        vals, _ = timer([r.arch for r in part], [r.net_id for r in part], "retest")
        again.extend(vals)
        bar.update(len(part))
    bar.close()
    first = np.array([r.latency_ms for r in chosen])
    out = retest_noise(first, np.array(again))
    out["retest_ids"] = [r.net_id for r in chosen]
    out["retest_finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return out


class MeasureTask(Task):
    """Time archs on this machine into a seed-format latency CSV."""
    groups = ("space", "device")
    # logged as protocol.* by the run (the values it timed with, after the device's defaults)
    unlogged_task_keys = ("threads", "warmup", "rounds", "chunk_size", "stat", "clock", "references")

    def params(self, ctx):
        p = super().params(ctx)
        cfg, t = ctx.cfg, self.cfg
        p.update(pick(cfg.device.latency, "device.latency", ("engine", "hw")))
        p["task.csv"] = str(resolve_path(t.csv or cfg.device.latency.get("csv") or "", cfg))
        if t.get("archs_csv"):
            p.pop("task.num_archs", None)  # the list's archs are timed, not num_archs samples
            p["task.archs_csv"] = str(resolve_path(t.archs_csv, cfg))
        return p

    def validate(self, ctx):
        _checked(ctx)

    def run(self, ctx, tracker):
        # a board or timing tool can fail on the first subnet (a wrong flag, a dropped link):
        # files this session created and put no row into are removed again
        csv_path = resolve_path(ctx.cfg.task.csv or ctx.cfg.device.latency.csv, ctx.cfg)
        fresh = [p for p in (csv_path, meta_path(csv_path), rounds_path(csv_path)) if not p.exists()]
        try:
            return run(ctx, tracker)
        except UserError:
            if csv_path in fresh and (not csv_path.is_file() or len(csv_path.read_text().splitlines()) <= 1):
                for p in fresh:
                    p.unlink(missing_ok=True)
            raise
