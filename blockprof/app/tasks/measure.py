"""task=measure: time sampled subnets on this machine into a seed-format latency CSV.

    python run.py task=measure space=mbv3 device=local_cpu task.num_archs=2000

Archs are sampled per net_id from the run's seed (the first N ids are the same
whatever N is), resolutions balanced over the space's. Rows are appended as
they are measured; a rerun with the same CSV skips every net_id already there
(and refuses a CSV that was measured from another sample or protocol).

Measurement protocol (chosen by measuring; numbers in the issue note). These
machines are shared: other jobs keep both cores busy for minutes at a time, so
wall-clock latency of one subnet drifted 3x over a 40-minute run, and the
co-runner on the other core slows even our own CPU time by up to ~30 %.

* **1 thread** (`threads`, default from the device): with 2 threads on a
  busy 2-core box every op waits for its slowest thread; timings were 3.5x
  slower and 3x noisier than with 1 thread.
* **Thread CPU time** (`clock: cpu`, CPU only, needs 1 thread): the forward
  pass is timed with the thread's CPU clock, which equals wall time on an idle
  machine but leaves out the time the scheduler gives to other jobs.
  (`clock: wall` for CUDA, or to reproduce plain wall-clock timing.)
* **Interleaved rounds**: `chunk_size` subnets are built and warmed up, then
  timed in `rounds` rounds, each round running every subnet of the chunk once
  in a fresh random order, so an arch's runs are spread over the chunk's time.
* **Median over the rounds** (`stat`): with the CPU clock the median was
  steadier than the minimum.
* **Reference subnets** (`references`, default 3, seeded, at the smallest,
  middle and largest resolution) run in every round like the archs. Each
  round's timings are divided by that round's drift factor, the geometric
  mean over the references of (their time in this round / their baseline),
  before the median over rounds is taken. The baselines are timed once, at
  the first session, with 3x the rounds, and kept in `<csv>.meta.json` so a
  resumed run stays on the same scale (the dataset's ms are "as fast as the
  machine was during calibration").

What it bought (OFA-MBv3, 2,000 archs, then 100 of them re-timed in a separate
pass at the end; 2 busy cores, load average 4 on average and up to 10):

    protocol                                           test-retest MAPE  within +-10 %
    wall clock, interleaved, min of 6                         82 %             11 %
    CPU clock, median of 6, references per chunk             7.5 %             73 %
    CPU clock, median of 6, references per round             5.4 %             86 %

(the last two are the same raw timings, reduced two ways). Short probes, 30
archs a minute apart, agreed: wall clock 14-30 %, CPU clock 5-8 %, CPU clock
with references 4-5 %. One thing the references cannot fix is the scale:
the dataset's ms are those of the machine as it was during calibration.

At the end a seeded sample of measured archs (`retest_archs`) is timed again
in a separate pass with the same protocol; test-retest MAPE and the share
within +-10 % go into `<csv>.meta.json` and MLflow. The raw per-round
timings (references included, as negative net_ids) are kept in
`<csv>.rounds.csv`.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from blockprof.common.errors import UserError
from blockprof.common.fileio import atomic_write_text
from blockprof.core.latency_csv import LatencyCSVWriter, read_latency_csv
from blockprof.metrics.measured import machine_info
from blockprof.common.progress import progress
from blockprof.core.space import Arch, DesignSpace
from blockprof.infra.tracking import resolve_path


@dataclass(frozen=True)
class Protocol:
    hw: str = "cpu"
    threads: int = 1
    warmup: int = 1
    rounds: int = 6
    chunk_size: int = 25
    stat: str = "median"
    clock: str = "cpu"
    references: int = 3
    normalise: str = "round"   # drift factor per round (the only reduction; recorded so old CSVs are told apart)
    batch_size: int = 1

    def check(self) -> "Protocol":
        if self.hw not in ("cpu", "cuda"):
            raise UserError(f"measure: device.latency.hw must be cpu or cuda, not '{self.hw}'")
        if self.hw == "cuda" and not torch.cuda.is_available():
            raise UserError("measure: device local_cuda needs a CUDA GPU, and torch sees none on this machine")
        if self.stat not in ("min", "median"):
            raise UserError(f"measure: task.stat must be min or median, not '{self.stat}'")
        if self.clock not in ("cpu", "wall"):
            raise UserError(f"measure: task.clock must be cpu or wall, not '{self.clock}'")
        if self.clock == "cpu" and (self.hw != "cpu" or self.threads != 1):
            raise UserError("measure: task.clock=cpu (thread CPU time) needs hw cpu and 1 thread; "
                            "use task.clock=wall for CUDA or several threads")
        if self.references < 0:
            raise UserError(f"measure: references must be >= 0, not {self.references}")
        for k in ("threads", "rounds", "chunk_size", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise UserError(f"measure: {k} must be >= 1, not {getattr(self, k)}")
        if self.warmup < 0:
            raise UserError(f"measure: warmup must be >= 0, not {self.warmup}")
        return self

    def same_data(self, other: dict) -> bool:
        """Rows measured under `other` mix with ours (chunking is only scheduling)."""
        mine = asdict(self)
        return all(other.get(k) == mine[k] for k in ("hw", "threads", "warmup", "rounds", "stat", "clock",
                                                     "references", "normalise", "batch_size"))


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


def reference_archs(space: DesignSpace, base_seed: int, k: int) -> list[Arch]:
    """k seeded reference archs at the smallest, middle and largest resolutions (cycled)."""
    rs = sorted(space.resolutions)
    picks = [rs[0], rs[len(rs) // 2], rs[-1]]
    return [space.sample(np.random.default_rng([base_seed, 4, j]), 1, resolution=picks[j % 3])[0]
            for j in range(k)]


def time_interleaved(space: DesignSpace, archs: list[Arch], proto: Protocol,
                     rng: np.random.Generator, rounds: int | None = None) -> np.ndarray:
    """Raw timings [len(archs), rounds] (ms) of one chunk, in interleaved rounds."""
    dev = proto.hw
    rounds = rounds or proto.rounds
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    clock = time.thread_time if proto.clock == "cpu" else time.perf_counter
    nets = [space.build_subnet(a).to(dev) for a in archs]
    xs = [torch.randn(proto.batch_size, 3, a.resolution, a.resolution, device=dev) for a in archs]
    times = np.empty((len(archs), rounds))
    with torch.inference_mode():
        for net, x in zip(nets, xs):
            for _ in range(proto.warmup):
                net(x)
        sync()
        for r in range(rounds):
            for i in rng.permutation(len(archs)):
                t0 = clock()
                nets[i](xs[i])
                sync()
                times[i, r] = (clock() - t0) * 1e3
    return times


def reduce_times(times: np.ndarray, stat: str) -> np.ndarray:
    return times.min(axis=1) if stat == "min" else np.median(times, axis=1)


class ChunkTimer:
    """Times chunks of archs with the reference subnets interleaved, and rescales
    every value by the chunk's drift factor (see the module docstring)."""

    def __init__(self, space, proto: Protocol, refs: list[Arch], baseline: list[float] | None, rng, log=None):
        self.space, self.proto, self.refs, self.rng, self.log = space, proto, refs, rng, log
        self.baseline = baseline
        if refs and baseline is None:  # calibrate once: the references alone, 3x the rounds
            raw = time_interleaved(space, refs, proto, rng, rounds=3 * proto.rounds)
            self.baseline = [float(v) for v in reduce_times(raw, proto.stat)]
            self.calibration_ms = [[round(float(x), 4) for x in row] for row in raw]

    def _log(self, ids, archs, raw, what):
        if self.log is not None:
            for i, a, row in zip(ids, archs, raw):
                self.log.writerow([int(i), a.resolution, what] + [f"{x:.4f}" for x in row])

    def __call__(self, archs: list[Arch], ids, what: str) -> tuple[np.ndarray, float]:
        raw = time_interleaved(self.space, list(archs) + self.refs, self.proto, self.rng)
        self._log(list(ids) + list(-1 - np.arange(len(self.refs))), list(archs) + self.refs, raw, what)
        return normalise_rounds(raw[:len(archs)], raw[len(archs):], self.baseline, self.proto.stat)


def normalise_rounds(raw: np.ndarray, ref_raw: np.ndarray, baseline, stat: str) -> tuple[np.ndarray, float]:
    """Per-arch values of one chunk: each round's timings divided by that round's drift
    factor (geometric mean over the references of timing / baseline), then `stat` over
    the rounds. Returns the values and the chunk's median drift factor."""
    if len(ref_raw) == 0:
        return reduce_times(raw, stat), 1.0
    per_round = np.exp(np.mean(np.log(ref_raw / np.asarray(baseline, dtype=np.float64)[:, None]), axis=0))
    return reduce_times(raw / per_round[None, :], stat), float(np.median(per_round))


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True), durable=True)


def meta_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".meta.json")


def rounds_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".rounds.csv")


class _Threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


def run(ctx, tracker):
    cfg, space = ctx.cfg, ctx.space
    t, lat = cfg.task, cfg.device.latency
    hw = lat.get("hw")
    if hw not in ("cpu", "cuda"):
        raise UserError(f"task=measure times subnets on this machine; device '{cfg.device.name}' is not local "
                        "(use device=local_cpu or device=local_cuda)")
    proto = Protocol(hw=str(hw), threads=int(t.threads if t.get("threads") is not None else lat.get("threads", 1)),
                     warmup=int(t.warmup), rounds=int(t.rounds), chunk_size=int(t.chunk_size),
                     stat=str(t.stat), clock=str(t.clock if hw == "cpu" else "wall"),
                     references=int(t.references), batch_size=int(t.get("batch_size", 1))).check()
    n = int(t.num_archs)
    if n < 1:
        raise UserError(f"task.num_archs must be >= 1, not {t.num_archs}")
    csv_path = resolve_path(t.csv or lat.csv, cfg)
    mpath = meta_path(csv_path)
    meta = json.loads(mpath.read_text()) if mpath.is_file() else None
    if meta is not None:
        if meta.get("space") != space.name:
            raise UserError(f"{csv_path} holds space {meta.get('space')}, not {space.name}; use another task.csv")
        if not proto.same_data(meta.get("protocol", {})):
            raise UserError(f"{csv_path} was measured with protocol {meta.get('protocol')}; resume it with the same "
                            f"settings or write to another task.csv")
    base_seed = int(np.random.default_rng(cfg.seed).integers(2 ** 31))
    archs = sample_archs(space, base_seed, n, t.get("resolution"))

    writer = LatencyCSVWriter(csv_path, space)
    existing = {r.net_id: r for r in read_latency_csv(csv_path, space)} if writer.done_ids else {}
    for i, rec in existing.items():
        if i < n and rec.arch != archs[i]:
            raise UserError(f"{csv_path}: net_id {i} is {rec.arch} but seed {cfg.seed} samples {archs[i]} there; "
                            "it was measured from another sample - resume with the same seed or use another task.csv")
    todo = [i for i in range(n) if i not in writer.done_ids]
    info = machine_info(proto.threads, proto.hw)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta = meta or {"format": "blockprof.measure", "space": space.name, "device": str(cfg.device.name),
                    "seed": int(cfg.seed), "protocol": asdict(proto), "sessions": []}
    session = {"started": now, "machine": info, "loadavg_start": list(os.getloadavg()),
               "requested": n, "already_measured": n - len(todo), "measured": 0}
    meta["sessions"].append(session)
    meta["machine"] = info
    mpath.parent.mkdir(parents=True, exist_ok=True)
    _write_json(mpath, meta)
    tracker.set_tags({f"machine.{k}": v for k, v in info.items()})
    tracker.log_params({f"protocol.{k}": v for k, v in asdict(proto).items()})
    print(f"measure: {len(todo)} of {n} archs to time on {info['cpu']} ({proto.threads} thread(s)) -> {csv_path}",
          flush=True)

    rng = np.random.default_rng([base_seed, 2, len(writer.done_ids)])
    rpath = rounds_path(csv_path)
    new_rounds = not rpath.exists()
    device_name = str(cfg.device.name)
    t0 = time.time()
    refs = reference_archs(space, base_seed, proto.references)
    saved_ref = meta.get("reference") or {}
    if saved_ref and saved_ref.get("archs") != [str(a) for a in refs]:
        raise UserError(f"{mpath}: reference archs differ from seed {cfg.seed}'s; use the same seed or another task.csv")
    with _Threads(proto.threads), open(rpath, "a", newline="") as rf:
        rw = csv.writer(rf)
        if new_rounds:
            rw.writerow(["net_id", "resolution", "pass"] + [f"t{k}" for k in range(proto.rounds)])
        timer = ChunkTimer(space, proto, refs, saved_ref.get("baseline_ms"), rng, rw)
        if refs and not saved_ref:
            meta["reference"] = {"archs": [str(a) for a in refs], "baseline_ms": timer.baseline,
                                 "calibration_ms": timer.calibration_ms,
                                 "calibrated": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _write_json(mpath, meta)
        factors = []
        bar = progress(None, desc="measure", total=len(todo))
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
        print(f"measure: test-retest on {retest['retest_n']:.0f} archs: MAPE {retest['retest_mape']:.2f} %, "
              f"{retest['retest_within10']:.1f} % within +-10 %", flush=True)
    tracker.log_metrics({"rows": len(writer.done_ids), "seconds": time.time() - t0})
    tracker.log_artifact(mpath)
    tracker.log_artifact(csv_path)
    print(f"measure: {len(writer.done_ids)} rows in {csv_path}")
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
    for c in progress(range(0, len(chosen), proto.chunk_size), desc="retest"):
        part = chosen[c:c + proto.chunk_size]
        vals, _ = timer([r.arch for r in part], [r.net_id for r in part], "retest")
        again.extend(vals)
    first = np.array([r.latency_ms for r in chosen])
    out = retest_noise(first, np.array(again))
    out["retest_ids"] = [r.net_id for r in chosen]
    out["retest_finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return out
