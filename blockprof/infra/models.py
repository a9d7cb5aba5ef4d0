"""Latency predictors as MLflow models: a pyfunc flavour of a checkpoint (input: the
seed's `net_str`/`resolution` columns, output: ms), logged with its signature and an input
example, and registered under one name per space and device.

Every training run adds one model version (its own checkpoint; nothing is overwritten),
tagged with its test figures, the data's hash and the git commit. The `champion` alias
marks the version a device serves by default: it moves only to a version that beats the
current champion on the new version's held-out set (`promote`), or by an explicit
`set_champion`. The file at `device.latency.checkpoint` mirrors the champion, so a run
without a tracking store serves the same model.

`device.latency.checkpoint` / `task.init_from` may name a version (`models:/<name>/<v>`)
or an alias (`models:/<name>@champion`); `fetch_checkpoint` resolves and downloads it once
into the output root's cache.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from blockprof.common.errors import UserError

log = logging.getLogger(__name__)

MODELS_SCHEME = "models:/"
CHAMPION = "champion"
MODEL_PREFIX = "blockprof-latency-"
# a version is never made champion on its own test figures alone when it ranks archs this badly
MIN_CHAMPION_SPEARMAN = 0.5

class _LatencyPyfuncImpl:
    """MLflow pyfunc flavour of a checkpoint: input a DataFrame with `net_str` and
    `resolution` columns (the seed's CSV columns), output latency in ms."""

    def load_context(self, context):
        import torch
        from blockprof.core.registry import build_space
        from blockprof.predictors.train import load_checkpoint
        path = context.artifacts["checkpoint"]
        sp = torch.load(path, map_location="cpu", weights_only=True)["space"]
        self.space = build_space(sp["name"], resolutions=sp["resolutions"], width_mult=sp["width_mult"] or None)
        self.model, _ = load_checkpoint(path, self.space)

    def predict(self, context, model_input, params=None):
        archs = [self.space.parse(t, r) for t, r in zip(model_input["net_str"], model_input["resolution"])]
        return self.model.predict(archs)


def _pyfunc_model():
    """A PythonModel instance; mlflow is imported only when a model is logged."""
    import warnings
    import mlflow.pyfunc
    with warnings.catch_warnings():  # MLflow nags about type hints on predict(); input is a DataFrame
        warnings.simplefilter("ignore")
        cls = type("LatencyPyfunc", (_LatencyPyfuncImpl, mlflow.pyfunc.PythonModel), {})
    return cls()


def registered_model_name(space: str, device: str) -> str:
    """The MLflow model-registry name of a space/device's latency predictor."""
    return f"blockprof-latency-{space}-{device}"


def log_mlflow_model(tracker, ckpt_path: Path, device: str | None = None, examples: int = 5,
                     registered_name: str | None = None) -> str | None:
    """Log the checkpoint as an MLflow pyfunc model of the tracker's run, with its signature
    and an input example (the seed's `net_str`/`resolution` columns), registered under
    `registered_model_name(space, device)` when `device` is given (no-op without tracking).
    Returns the new model version (None when nothing was registered)."""
    if not getattr(tracker, "enabled", False):
        return None
    import numpy as np
    import pandas as pd
    import torch
    from blockprof.core.registry import build_space
    from blockprof.predictors.train import load_checkpoint

    sp = torch.load(ckpt_path, map_location="cpu", weights_only=True)["space"]
    space = build_space(sp["name"], resolutions=sp["resolutions"], width_mult=sp["width_mult"] or None)
    model, _ = load_checkpoint(ckpt_path, space)
    archs = space.sample(np.random.default_rng(0), examples)
    example = pd.DataFrame({"net_str": [a.text for a in archs], "resolution": [a.resolution for a in archs]})
    predicted = np.asarray(model.predict(archs), dtype=np.float64)

    def log(mlflow):
        import logging
        import os
        import warnings
        from mlflow.models import infer_signature
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in ("mlflow.pyfunc", "mlflow.models", "mlflow.store.model_registry"):
                logging.getLogger(name).setLevel(logging.ERROR)  # the cloudpickle / registry notices
            return mlflow.pyfunc.log_model(name="latency_predictor", python_model=_pyfunc_model(),
                                    artifacts={"checkpoint": str(ckpt_path)},
                                    signature=infer_signature(example, predicted), input_example=example,
                                    registered_model_name=registered_name or (
                                        registered_model_name(sp["name"], device) if device else None),
                                    pip_requirements=["torch", "numpy", "ofa", "blockprof"])
    info = tracker.call_mlflow(log)
    version = getattr(info, "registered_model_version", None) if info is not None else None
    return str(version) if version is not None else None


def log_training_data(tracker, csv_path: Path, device: str) -> None:
    """Record the latency CSV a predictor was trained on as the run's MLflow dataset input."""
    if not getattr(tracker, "enabled", False):
        return
    import pandas as pd

    def log(mlflow):
        df = pd.read_csv(csv_path)
        data = mlflow.data.from_pandas(df, source=str(Path(csv_path).resolve()), name=Path(csv_path).name)
        mlflow.log_input(data, context="training", tags={"device": device})
    tracker.call_mlflow(log)


# ===================================================================== the registry
def store_uri(cfg) -> str | None:
    """The tracking (and registry) URI of this config, None with tracking=none."""
    from blockprof.infra.tracking import _backend, _store
    return None if _backend(cfg) == "none" else _store(cfg)[0]


def _client(uri: str):
    from mlflow.tracking import MlflowClient
    from blockprof.infra.tracking import _quiet_store_logs
    _quiet_store_logs()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_model_uri(value) -> bool:
    return str(value or "").startswith(MODELS_SCHEME)


def parse_model_uri(uri: str, where: str = "device.latency.checkpoint") -> tuple[str, str | None, str | None]:
    """`models:/<name>/<version>` or `models:/<name>@<alias>` -> (name, version, alias)."""
    rest = str(uri)[len(MODELS_SCHEME):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in name:
            return name, None, alias
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, version, None
    raise UserError(f"{where}={uri} is not models:/<name>/<version> or models:/<name>@<alias>")


def _get_version(client, name: str, version: str | None, alias: str | None):
    """The ModelVersion, or None when the model, version or alias does not exist."""
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        return None


def _download_checkpoint(uri: str, name: str, mv, cache_root: Path) -> Path:
    """The checkpoint file of a model version, downloaded once (a version never changes; the
    folder also names its creation time, so a store started afresh never reads a stale copy)."""
    import mlflow.artifacts
    version = str(mv.version)
    dest = cache_root / name / f"{version}-{mv.creation_timestamp}"
    if not dest.is_dir():
        staging = dest.with_name(f".{dest.name}.download")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{MODELS_SCHEME}{name}/{version}",
                                                dst_path=str(staging), tracking_uri=uri)
            staging.replace(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    hits = sorted(dest.rglob("*.pt"))
    if not hits:
        raise UserError(f"{MODELS_SCHEME}{name}/{version} holds no predictor checkpoint (.pt) in {dest}")
    return hits[0]


def fetch_checkpoint(cfg, model_uri: str, where: str = "device.latency.checkpoint") -> tuple[Path, dict]:
    """The local checkpoint file of a `models:/...` URI and what the registry says about it
    (name, version, alias, run, and the version's tags: test figures, data hash, commit)."""
    from blockprof.infra.tracking import resolve_output_root
    name, version, alias = parse_model_uri(model_uri, where)
    uri = store_uri(cfg)
    if uri is None:
        raise UserError(f"{where}={model_uri} needs the model registry; drop tracking=none "
                        "(or point it at the checkpoint file)")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"{where}={model_uri}: there is no MLflow store at {uri} yet")
    client = _client(uri)
    mv = _get_version(client, name, version, alias)
    if mv is None:
        known = _versions_text(client, name)
        raise UserError(f"{where}={model_uri}: no such model version in {uri} ({known})")
    path = _download_checkpoint(uri, name, mv, resolve_output_root(cfg) / "cache" / "models")
    info = {"uri": model_uri, "name": name, "version": str(mv.version), "alias": alias or "",
            "run_id": mv.run_id or "", **{f"tag.{k}": v for k, v in (mv.tags or {}).items()}}
    return path, info


def _versions_text(client, name: str) -> str:
    from mlflow.exceptions import MlflowException
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        return f"no registered model {name}"
    vs = client.search_model_versions(f"name='{name}'")
    aliases = ", ".join(f"@{a}" for a in sorted((rm.aliases or {}).keys()))
    return f"{name} has versions {sorted(int(v.version) for v in vs)}" + (f", aliases {aliases}" if aliases else "")


def version_tags(result: dict, space: str, device: str, commit: str, sweep: bool, extra: dict | None = None) -> dict:
    """The tags a predictor's model version carries: enough to trust or find it again."""
    test, data = result["test"], result["data"]
    tags = {"space": space, "device": device, "model": result["opts"].model,
            "test_mape": f"{test['mape']:.4f}", "test_spearman": f"{test['spearman']:.4f}",
            "test_within10": f"{test['within10']:.2f}", "test_n": str(int(test["n"])),
            "held_out": data.get("held_out", ""), "csv": Path(data["csv"]).name, "csv_sha256": data["sha256"],
            "rows": str(data["rows"]), "split_seed": str(data["seed"]),
            "train_archs": str(data["split_sizes"][0]), "git_commit": commit, "sweep": str(bool(sweep)).lower()}
    if data.get("init_from"):
        tags["init_from"] = str(data["init_from"]["checkpoint"])
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def describe_version(tags: dict) -> str:
    return (f"{tags['model']} latency predictor for {tags['space']} on {tags['device']}: test MAPE "
            f"{float(tags['test_mape']):.2f} %, Spearman {float(tags['test_spearman']):.3f} on "
            f"{tags['test_n']} held-out archs (set {tags['held_out']}); trained on {tags['train_archs']} of "
            f"{tags['rows']} archs of {tags['csv']} (sha256 {tags['csv_sha256'][:12]}), split seed "
            f"{tags['split_seed']}, commit {tags['git_commit'][:12]}")


def tag_version(cfg, name: str, version: str, tags: dict) -> None:
    """Tags and description of a new model version (a store failure is a warning: the
    checkpoint and the run are kept either way)."""
    try:
        client = _client(store_uri(cfg))
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.update_model_version(name, version, description=describe_version(tags))
    except Exception as exc:
        log.warning("predictors: could not tag %s version %s (%s)", name, version, " ".join(str(exc).split())[:200])


def _mape(model, archs, y) -> float:
    import numpy as np
    pred = np.asarray(model.predict(list(archs)), dtype=np.float64)
    return float(np.mean(np.abs(pred - y) / y) * 100)


def _champion_model(cfg, space, name: str, champion_file: Path | None, use_registry: bool = True):
    """(model, label, version) of the current champion: the registry alias first, else the
    champion file; None when there is none, or it no longer loads for this space."""
    from blockprof.predictors.train import load_checkpoint
    uri = store_uri(cfg) if use_registry else None
    candidates = []
    if uri is not None:
        try:
            mv = _get_version(_client(uri), name, None, CHAMPION)
        except Exception as exc:  # the store is unreachable: judge against the file alone
            log.warning("predictors: cannot read the champion alias from %s (%s)", uri, " ".join(str(exc).split())[:200])
            mv = None
        if mv is not None:
            candidates.append((lambda mv=mv: _download_checkpoint(uri, name, mv, _cache_root(cfg)),
                               f"{MODELS_SCHEME}{name}/{mv.version}", str(mv.version)))
    if champion_file is not None and Path(champion_file).is_file():
        candidates.append((lambda: Path(champion_file), str(champion_file), None))
    for get, label, version in candidates[:1] or []:
        try:
            model, _ = load_checkpoint(get(), space)
        except UserError as exc:  # another feature version: it cannot compete on this code
            log.info("predictors: the current champion %s no longer loads (%s)", label, exc)
            return None
        return model, label, version
    return None


def _cache_root(cfg) -> Path:
    from blockprof.infra.tracking import resolve_output_root
    return resolve_output_root(cfg) / "cache" / "models"


def promote(cfg, space, name: str, version: str | None, ckpt_path: Path, result: dict, mode: str,
            champion_file: Path | None, use_registry: bool = True) -> dict:
    """Decide whether a freshly trained predictor becomes the champion, and move the alias
    (and the champion file) if so. `mode`: "auto" (the gate), "force", "never" (sweeps).

    The gate: the current champion predicts the new version's held-out archs, and the new
    version must have the lower MAPE there. A champion trained on some of those archs has
    the advantage, so the gate errs on the side of keeping it."""
    import numpy as np
    test = result["test"]
    decision = {"mode": mode, "promoted": False, "new_mape": float(test["mape"])}
    if mode == "never":
        decision["why"] = "sweep trial or task.promote=false: the champion never moves"
        return decision
    if mode == "auto":
        current = _champion_model(cfg, space, name, champion_file, use_registry)
        if result.get("small_test"):
            # the user allowed a small test set: it may serve where nothing else does, but its
            # figures (a Spearman over a handful of archs) cannot tell whether it beats a champion
            if current is not None:
                decision["why"] = f"held-out set of {int(test['n'])} archs is too small to compare with the champion"
                return decision
        else:
            rho = float(test.get("spearman", float("nan")))
            if not math.isfinite(rho) or rho < MIN_CHAMPION_SPEARMAN:
                decision["why"] = f"test Spearman {rho:.3f} < {MIN_CHAMPION_SPEARMAN}"
                return decision
        if current is not None:
            model, label, _ = current
            champ = _mape(model, result["test_archs"], np.asarray(result["test_ms"], dtype=np.float64))
            decision.update(champion=label, champion_mape=champ)
            if not float(test["mape"]) < champ:
                decision["why"] = (f"test MAPE {float(test['mape']):.2f} % does not beat the champion's "
                                   f"{champ:.2f} % on the same {int(test['n'])} held-out archs")
                return decision
    decision["promoted"] = True
    decision["why"] = decision.get("why") or ("explicit promotion" if mode == "force" else
                                              "no champion yet" if "champion" not in decision else
                                              f"beats the champion's {decision['champion_mape']:.2f} % on the same held-out archs")
    uri = store_uri(cfg) if use_registry else None
    if version is not None and uri is not None:
        try:
            _client(uri).set_registered_model_alias(name, CHAMPION, version)
        except Exception as exc:
            log.warning("predictors: could not move %s@%s to version %s (%s)", name, CHAMPION, version,
                        " ".join(str(exc).split())[:200])
    if champion_file is not None and Path(champion_file).resolve() != Path(ckpt_path).resolve():
        from blockprof.common.fileio import atomic_write
        atomic_write(champion_file, lambda tmp: shutil.copyfile(ckpt_path, tmp), durable=True)
    return decision


def note_serving(tags: dict) -> None:
    """Tag the MLflow run in progress (the task's) with the predictor that serves it; a no-op
    outside a tracked run. Metrics are built before the run opens, so they say it here."""
    try:
        import mlflow
        if mlflow.active_run() is not None:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
    except Exception as exc:  # tracking is a convenience: never fail the scoring for it
        log.debug("could not tag the run with its predictor: %s", exc)


def set_champion(uri: str, name: str, version: str) -> None:
    """Move the champion alias by hand (the explicit command)."""
    client = _client(uri)
    if _get_version(client, name, str(version), None) is None:
        raise UserError(f"no version {version} of {name} in {uri} ({_versions_text(client, name)})")
    client.set_registered_model_alias(name, CHAMPION, str(version))


def list_predictors(uri: str) -> list[dict]:
    """Every registered latency predictor version: device, data, test figures, aliases."""
    client = _client(uri)
    rows = []
    for rm in client.search_registered_models(f"name LIKE '{MODEL_PREFIX}%'"):
        by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            t = mv.tags or {}
            rows.append({"name": rm.name, "version": int(mv.version),
                         "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
                         "space": t.get("space", ""), "device": t.get("device", ""), "model": t.get("model", ""),
                         "csv": t.get("csv", ""), "csv_sha256": t.get("csv_sha256", "")[:12],
                         "rows": t.get("rows", ""), "test_n": t.get("test_n", ""),
                         "test_mape": t.get("test_mape", ""), "test_spearman": t.get("test_spearman", ""),
                         "held_out": t.get("held_out", ""), "sweep": t.get("sweep", ""),
                         "git_commit": t.get("git_commit", "")[:12], "run_id": mv.run_id or ""})
    return sorted(rows, key=lambda r: (r["name"], r["version"]))


def main(argv=None) -> int:
    """`python -m blockprof.latency_models list|champion`: the registered predictors."""
    import argparse
    import sys
    ap = argparse.ArgumentParser(prog="python -m blockprof.latency_models",
                                 description="List the registered latency predictors, or move the champion alias.")
    ap.add_argument("--uri", help="tracking store (default: sqlite:///<output-root>/mlflow.db)")
    ap.add_argument("--output-root", default="outputs", help="paths.output_root of the runs (default: outputs)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="every predictor version with its device, data, test figures and aliases")
    ls.add_argument("--device")
    ls.add_argument("--space")
    ch = sub.add_parser("champion", help="make a version the champion (the explicit command)")
    ch.add_argument("name")
    ch.add_argument("version")
    args = ap.parse_args(argv)
    uri = args.uri or f"sqlite:///{(Path(args.output_root) / 'mlflow.db').resolve()}"
    try:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise UserError(f"no MLflow store at {uri}; pass --output-root or --uri")
        if args.cmd == "champion":
            set_champion(uri, args.name, args.version)
            print(f"{args.name}@{CHAMPION} -> version {args.version}")
            return 0
        rows = [r for r in list_predictors(uri) if (not args.device or r["device"] == args.device)
                and (not args.space or r["space"] == args.space)]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"no registered latency predictors in {uri}")
        return 0
    cols = ["name", "version", "aliases", "device", "space", "model", "csv", "csv_sha256", "rows", "test_n",
            "test_mape", "test_spearman", "sweep", "git_commit"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
    return 0
