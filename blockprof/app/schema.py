"""Config schemas: one dataclass per config group option, stored in Hydra's ConfigStore.

Every YAML file under conf/ starts from one of these (`defaults: [/schema/<group>/<name>@_here_]`)
and writes only what differs, so each default lives here once. Hydra validates while it
composes: a wrong type (`task.num_archs=2.9`) or a key that is not in the schema
(`task.num_archz=5`) fails before any run folder exists. Keys added with `+` are checked
against the same schemas by `unknown_keys` before the run starts.

Kept light (dataclasses only, strategies' own schemas aside) so `--help` and shell
completion stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


# ------------------------------------------------------------------ space
@dataclass
class SpaceConfig:
    _target_: str = "blockprof.core.registry.build_space"
    name: str = MISSING
    width_mult: Optional[float] = None
    resolutions: List[int] = MISSING
    # hypervolume reference (the worst corner) per objective, so every search of this space
    # is measured against the same point; latency's comes from the device
    hv_reference: Dict[str, Optional[float]] = field(default_factory=dict)


# ------------------------------------------------------------------ device latency variants
@dataclass
class LatencyConfig:
    """What every device carries besides its source: its cost scale. Latencies are in ms.

    hv_reference / cost_limits: the search's hypervolume reference and default
    `search.cost_limits.latency` on this device; a number (a list) for every space, or a
    mapping space name -> value. Unset for a space: derived from the device's own data
    (blockprof.app.device.device_costs), so a search aims at budgets that exist there.
    """
    # the source picks the builder: blockprof.app.metric_factory.<source>_latency(cfg, space)
    _target_: str = "blockprof.app.metric_factory.${.source}_latency"
    source: str = MISSING
    hv_reference: Any = None   # ms, or {space: ms}
    cost_limits: Any = None    # [ms, ...], or {space: [ms, ...]}


@dataclass
class LUTLatencyConfig(LatencyConfig):
    """Per-layer lookup tables; what they cover is read from their keys (blockprof.metrics.lut)."""
    source: str = "lut"
    # a folder of <resolution>_lookup_table.yaml files, one YAML table, `asset:<published table>`,
    # or a list of these ({path, format, transfer} entries allowed): the first that covers the space serves it
    table: Any = None
    format: str = "auto"       # auto | ofa | proxyless: the tables' key format (auto: read from the keys)
    transfer: str = "none"     # none | macs: serve other widths/resolutions by MAC ratio (an estimate)


@dataclass
class PredictorLatencyConfig(LatencyConfig):
    """A latency predictor trained on a CSV of measurements (trained on first use)."""
    source: str = "predictor"
    csv: str = "${paths.data_dir}/ofa_${space.name}_${device.name}_lat_data.csv"
    checkpoint: str = "${paths.data_dir}/predictors/${space.name}_${device.name}_${device.latency.model}.pt"
    model: str = "gnn"
    train: Dict[str, Any] = field(default_factory=dict)  # on-demand training options (TrainOptions fields)
    min_test_archs: int = 50           # on-demand training refuses a CSV whose test split is smaller ...
    allow_small_test: bool = False     # ... unless this is set


@dataclass
class MeasuredLatencyConfig(PredictorLatencyConfig):
    """A device blockprof times itself. `source: calibrated` (default): a GNN fitted once per
    (space, device, machine) on a measured calibration set (blockprof/app/calibration.py);
    `measured`: every arch timed directly; `predictor`: a GNN trained on a task=measure CSV."""
    # calibrated unless $BLOCKPROF_MEASURED_SOURCE names another default for this machine
    # (e.g. `measured` on a CI runner that must not spend minutes calibrating)
    source: str = "${oc.env:BLOCKPROF_MEASURED_SOURCE,calibrated}"
    calib_archs: int = 250         # archs timed once per (space, device, machine)
    calib_split: List[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train / dev / held-out test
    calib_seed: Optional[int] = None  # the calibration's own seed (None: the run's); another seed, another calibration
    calib_select: str = "random"   # random | coverage (held-out archs stay random; the rest cover the space)
    calib_rounds: int = 6          # timed rounds per calibration arch
    calib_warmup: int = 1
    calib_retest: int = 25         # archs timed twice: the test-retest floor
    calib_dir: str = "${paths.data_dir}/calibration"
    retime_rounds: int = 5         # each run re-times the reference subnets (3x this many runs each; 0: never)
    # rescale only when every reference moved the same way, the median by more than this: on an
    # idle 2-core machine, 12 fresh-process re-timings of the same calibration read the median
    # reference at 0.85-1.15x its baseline (process warm-up, not machine speed), so 0.15 let one
    # run in six jump by 14 %
    rescale_threshold: float = 0.25
    verify_front: int = 30         # task=search: time up to this many final-front archs directly (0: off)
    hw: str = "cpu"            # cpu | cuda
    engine: str = "torch"      # the inference engine that runs the subnet
    threads: int = 1
    warmup: int = 3
    repeats: int = 10          # timed runs per subnet, one per interleaved round (blockprof.metrics.timing)
    stat: str = "median"       # median | min
    clock: str = "cpu"         # cpu: CPU time (1 thread, hw cpu) | wall (CUDA: events)
    chunk_size: int = 25       # subnets timed together in interleaved rounds
    references: int = 3        # reference subnets per round that rescale drift (0: off)
    cache_dir: str = "${paths.output_root}/cache/onnx"  # exported ONNX models (onnx engines)


@dataclass
class SSHLatencyConfig(MeasuredLatencyConfig):
    """The real subnet exported to ONNX here, copied to a board over SSH and timed there by a
    runner blockprof ships (same protocol: interleaved rounds, references, median); the
    board needs python with numpy and the engine. See docs/remote_devices.md."""
    via: str = "ssh"                       # where the subnets run (blockprof.metrics.measured.VIAS)
    engine: str = "onnxruntime"            # onnxruntime | openvino, on the board
    host: Optional[str] = None             # the board's name or address (an ~/.ssh/config alias works)
    port: int = 22
    user: Optional[str] = None             # None: ssh's default (your user, or ~/.ssh/config)
    identity_file: Optional[str] = None    # private key; None: ssh's defaults and agent
    known_hosts: Optional[str] = None      # None: blockprof's own file in its cache folder (accept-new)
    remote_dir: str = "blockprof-remote"   # on the board, relative to its home: runner, models, runner.log
    python: str = "python3"                # the board's interpreter
    connect_timeout: int = 10              # s
    ssh_options: List[str] = field(default_factory=list)  # extra `ssh -o` options, e.g. [ProxyJump=gateway]


@dataclass
class CommandLatencyConfig(MeasuredLatencyConfig):
    """The real subnet exported to ONNX (optionally converted) and timed by any vendor's tool:
    one call of `command` per timing, the latency read from its output by `pattern`.
    See docs/remote_devices.md (templates, quoting on the command line)."""
    via: str = "command"
    engine: str = "command"
    clock: str = "tool"                    # the tool reports its own time
    hw: str = "cpu"                        # informational: what the tool runs on
    command: Optional[str] = None          # e.g. "trtexec --onnx={onnx}"; {onnx} / {tflite}: the file
    pattern: str = "benchmark_model"       # a regex (group value + group unit) or benchmark_model | trtexec
    unit: str = "ms"                       # when the pattern has no unit group: us | ms | s
    convert: Optional[str] = None          # for {tflite}: a command writing {tflite} from {onnx}
    timeout_s: float = 600.0               # per call of the tool
    warmup: int = 0                        # calls thrown away per subnet (the tool warms up itself)
    repeats: int = 3                       # calls per subnet (rounds), each the tool's own average


@dataclass
class DeviceConfig:
    # the device's identity: the name of its option (conf/device/<name>.yaml or one in
    # --config-dir); a run whose device.name differs from the option is refused
    # (blockprof.app.device.check_identity), so no folder, tag or title names a device
    # whose latencies the run did not use
    name: str = MISSING
    latency: Any = MISSING     # one of the latency variants above


# ------------------------------------------------------------------ metrics
@dataclass
class AccuracyConfig:
    # the source picks the builder: blockprof.app.metric_factory.<source>_accuracy(cfg, space)
    _target_: str = "blockprof.app.metric_factory.${.source}_accuracy"
    source: str = "predictor"          # predictor | supernet
    checkpoint: Optional[str] = None   # explicit predictor file
    checkpoint_dir: Optional[str] = None
    calib_images: int = 2000
    calib_batch_size: int = 200
    batch_size: int = 256
    eval_subset: Optional[int] = None
    seed: int = "${seed}"  # type: ignore[assignment]  # interpolated
    device: str = "auto"
    threads: Optional[int] = None
    archs_per_pass: int = 8
    memo: Optional[str] = None
    allow_pickle: bool = False


@dataclass
class MetricConfig:
    names: List[str] = MISSING
    skip_unavailable: bool = False
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)


# ------------------------------------------------------------------ tasks
@dataclass
class TaskConfig:
    _target_: str = MISSING
    name: str = MISSING
    needs_metrics: bool = True
    objective: Optional[str] = None  # the float a sweeper optimises (None: the task returns nothing to optimise)


@dataclass
class ProfileTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.profile.ProfileTask"
    name: str = "profile"
    num_archs: int = 50
    all: bool = True
    blocks: List[Any] = field(default_factory=list)
    resolutions: List[int] = field(default_factory=list)
    chunk_archs: int = 20000
    shard_index: int = 0
    num_shards: int = 1


@dataclass
class MergeProfileTaskConfig(ProfileTaskConfig):
    _target_: str = "blockprof.app.tasks.merge_profile.MergeProfileTask"
    name: str = "merge_profile"
    inputs: List[str] = field(default_factory=list)


@dataclass
class EvaluateTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.evaluate.EvaluateTask"
    name: str = "evaluate"
    num_archs: int = 100
    archs_csv: Optional[str] = None


@dataclass
class MeasureTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.measure.MeasureTask"
    name: str = "measure"
    needs_metrics: bool = False
    num_archs: int = 200
    csv: Optional[str] = None
    resolution: Optional[int] = None
    threads: Optional[int] = None
    warmup: int = 1
    rounds: int = 6
    chunk_size: int = 25
    stat: str = "median"
    clock: str = "cpu"
    references: int = 3
    retest_archs: int = 100
    archs_csv: Optional[str] = None


@dataclass
class TrainPredictorTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.train_predictor.TrainPredictorTask"
    name: str = "train_predictor"
    needs_metrics: bool = False
    objective: Optional[str] = "test_mape"
    csv: Optional[str] = None
    checkpoint: Optional[str] = None
    model: Optional[str] = None
    split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    max_epochs: int = 400
    patience: int = 60
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 1e-5
    hidden: Optional[int] = None       # None: 32, or init_from's
    layers: Optional[int] = None       # None: 1, or init_from's
    ridge: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    loss: str = "rel_l1"
    threads: int = 1
    log_model: bool = True             # register the run's checkpoint as a new MLflow model version
    promote: Optional[bool] = None     # champion alias: None = only if it beats the champion, true = make it, false = never
    min_test_archs: int = 50           # a CSV whose test split is smaller is refused ...
    allow_small_test: bool = False     # ... unless this is set (then champion only where there is none)
    init_from: Optional[str] = None    # fine-tune from another device's checkpoint or models:/ URI (few-shot)
    train_archs: Optional[int] = None  # use only this many (seeded) training archs
    device_filter: Optional[str] = None  # train only on the CSV rows of this device (mixed or other-device CSVs)


@dataclass
class ExportTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.export.ExportTask"
    name: str = "export"
    needs_metrics: bool = False
    num_archs: int = 20
    archs_csv: Optional[str] = None
    out_dir: Optional[str] = None
    formats: List[str] = field(default_factory=lambda: ["onnx"])
    opset: int = 17
    target: str = "${device.name}"     # the device the files are for: manifest's device column, run folder name
    unit: str = "ms"
    threads: int = 1
    weights: str = "random"            # random (latency only) | supernet (the pretrained OFA subnet, deployable)
    checkpoint_dir: Optional[str] = None  # weights=supernet: folder holding the OFA checkpoint (else cache/mirror/download)
    calib_images: int = 2000           # weights=supernet with ImageNet configured: BatchNorm re-calibration images
    calib_batch_size: int = 200


@dataclass
class SearchTaskConfig(TaskConfig):
    _target_: str = "blockprof.app.tasks.search.SearchTask"
    name: str = "search"
    objective: Optional[str] = "hypervolume"
    resume_dir: Optional[str] = None
    fsync: bool = True


# ------------------------------------------------------------------ tracking, data, paths
@dataclass
class TrackingConfig:
    backend: str = "local"               # local | server | none
    uri: Optional[str] = None
    experiment: str = "blockprof"
    # one MLflow experiment per task, `<experiment>/<task>` (each table shows that task's columns)
    experiment_per_task: bool = True
    artifact_root: Optional[str] = None
    request_timeout_s: int = 5
    max_retries: int = 1


@dataclass
class DataConfig:
    imagenet: Optional[str] = None
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    val_fast: Optional[str] = None
    workers: int = 4


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    data_dir: str = "data"


@dataclass
class RunConfig:
    """The composed run: one node per group, validated by that group's own schema."""
    space: SpaceConfig = MISSING
    device: DeviceConfig = MISSING
    metric: MetricConfig = MISSING
    search: Any = MISSING
    task: Any = MISSING
    tracking: TrackingConfig = MISSING
    data: DataConfig = MISSING
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)


TASK_SCHEMAS = {c().name: c for c in (ProfileTaskConfig, MergeProfileTaskConfig, EvaluateTaskConfig,
                                       MeasureTaskConfig, TrainPredictorTaskConfig, SearchTaskConfig,
                                       ExportTaskConfig)}
LATENCY_SCHEMAS = {"lut": LUTLatencyConfig, "predictor": PredictorLatencyConfig, "measured": MeasuredLatencyConfig,
                   "ssh": SSHLatencyConfig, "command": CommandLatencyConfig}


def register(plugins: bool = True) -> None:
    """Store every schema under `schema/<group>/<name>` (idempotent), then (`plugins`) import the
    installed plugins (their strategies and tasks store their own schemas as they are
    defined) and hand their config folders to Hydra's search path."""
    import importlib
    import pkgutil

    import blockprof.search
    from blockprof.common.plugins import add_config_search_path, load_plugins

    # every module of the search package (numpy only, and strategies.py imports most of them
    # anyway): a strategy class in a module of its own stores its schema as it is defined
    for mod in pkgutil.iter_modules(blockprof.search.__path__):
        importlib.import_module(f"blockprof.search.{mod.name}")
    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=RunConfig)
    cs.store(group="schema/space", name="base", node=SpaceConfig)
    cs.store(group="schema/device", name="base", node=DeviceConfig)
    for name, node in LATENCY_SCHEMAS.items():
        cs.store(group="schema/device/latency", name=name, node=node)
    cs.store(group="schema/metric", name="base", node=MetricConfig)
    cs.store(group="schema/metric/accuracy", name="base", node=AccuracyConfig)
    for name, node in TASK_SCHEMAS.items():
        cs.store(group="schema/task", name=name, node=node)
    cs.store(group="schema/tracking", name="base", node=TrackingConfig)
    cs.store(group="schema/data", name="base", node=DataConfig)
    if plugins:
        load_plugins()
        add_config_search_path()


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys present in a structured node but not in its schema (Hydra lets `+key=value`
    add them), as (full key, the schema's keys)."""
    out = []
    schema = OmegaConf.get_type(cfg)
    if is_dataclass(schema):
        known = [f.name for f in fields(schema)]
        out += [(prefix + str(k), known) for k in cfg.keys() if k not in known]
    for k in cfg.keys():
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            out += unknown_keys(node, f"{prefix}{k}.")
        elif isinstance(node, ListConfig):
            continue
    return out
