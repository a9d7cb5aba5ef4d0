"""The `blockprof` command (and `python run.py`): Hydra composes the packaged configs
(`pkg://blockprof.conf`, the repository's conf/ folder) and blockprof.app runs the task.

Hydra reports a composition or validation error as a multi-line message (and a traceback
for some); here every such user error becomes one `error:` line and exit code 2, the
same as the app's own checks. `HYDRA_FULL_ERROR=1` still shows Hydra's full report.

`--help` renders the hydra/help template (conf/hydra/help/blockprof.yaml) here and shell
completion is Hydra's, cut to the keys and options a user sets (see `_print_help` and
`_complete` for why).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from blockprof.app.schema import register

# `--help`: the groups a user chooses from, in this order (not the internal schema/* groups;
# insight files are read by the search, not chosen as a group)
USER_GROUPS = {
    "space": "the design space",
    "device": "where latency comes from (a lookup table, a predictor, this machine)",
    "metric": "the metric set",
    "task": "what the run does",
    "search": "the search strategy (task=search)",
    "tracking": "where results are tracked (MLflow)",
    "data": "ImageNet folders for supernet accuracy",
    "experiment": "presets for the paper's runs",
    "debug": "tiny sizes to try a command in seconds",
    "hparams_search": "Optuna studies (a multirun of their own)",
}
HYDRA_GROUPS = {"hydra/launcher": "how multirun (-m) jobs are launched"}
# the plugins' own launcher names, which blockprof's parallel, processes and slurm set up
_PLUGIN_LAUNCHERS = ("joblib", "submitit_local", "submitit_slurm")
# what `~group` may delete: the optional defaults. Every other key has a schema default
# that the run reads, so deleting it can only fail later, less clearly
_DELETABLE = {"experiment", "debug", "hparams_search"}
_SHELL_CHARS = re.compile(r"""[\s;&|<>$`*?!#'"\\()]""")


def _folder_suffix(overrides: str) -> str:
    """`-search.budget-100+seed-1` for a sweep job's folder name: one folder level, only
    characters that need no quoting in a shell or a Hydra override, at most 120 of them;
    nothing for a plain run."""
    if not overrides:
        return ""
    return "-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", overrides.replace("\\", ""))[:120]


# `hydra.sweep.subdir` ends with the job's overrides (`-search.budget=100`)
OmegaConf.register_new_resolver("bp.suffix", _folder_suffix, replace=True)


_job_started = False


@hydra.main(version_base="1.3", config_path="pkg://blockprof.conf", config_name="config")
def _hydra_main(cfg):
    global _job_started
    _job_started = True
    from blockprof.app.main import main_entry  # imported late: `--help` and completion stay fast
    return main_entry(cfg)


# ------------------------------------------------------------------ --help
def _conf_dirs(args: list[str]) -> list[Path]:
    """The packaged conf/ folder, a `--config-dir` and the installed plugins' config folders
    (their options join the packaged ones)."""
    import importlib.resources

    from blockprof.common.plugins import config_paths
    dirs = [Path(str(importlib.resources.files("blockprof.conf")))]
    for i, a in enumerate(args):
        if a in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]).expanduser())
        elif a.startswith("--config-dir="):
            dirs.append(Path(a.split("=", 1)[1]).expanduser())
    for path in config_paths():
        if path.startswith("pkg://"):
            dirs.append(Path(str(importlib.resources.files(path[len("pkg://"):]))))
        else:
            dirs.append(Path(path[len("file://"):]))
    return dirs


def _group_lines(groups: dict[str, str], dirs: list[Path], defaults: dict[str, str],
                 builtin: dict[str, list[str]]) -> str:
    """One entry per group: what it chooses, then its options (`*` marks the default)."""
    width = max(len(g) for g in groups) + 2
    lines = []
    for group, what in groups.items():
        options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")} | set(builtin.get(group, ())))
        marked = [f"*{o}" if o == defaults.get(group) else o for o in options]
        lines.append(f"  {group:<{width}}{what}\n  {'':<{width}}{', '.join(marked)}")
    return "\n".join(lines) + "\n"


def _defaults(conf: Path) -> dict[str, str]:
    """The primary config's default option per group (`space: mbv3`)."""
    import yaml
    out = {"hydra/launcher": "basic"}
    for item in yaml.safe_load((conf / "config.yaml").read_text()).get("defaults", []):
        if isinstance(item, dict):
            out.update({k: v for k, v in item.items() if isinstance(v, str) and " " not in k})
    return out


def _print_help(args: list[str]) -> None:
    """`--help` from the hydra/help template. Hydra renders it by composing the whole config
    store once per group option (about 170 times: 10 s); the groups here come from the
    config folders instead, which takes milliseconds. `HYDRA_FULL_ERROR=1` leaves `--help`
    to Hydra."""
    import string

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    dirs = _conf_dirs(args)
    node = OmegaConf.load(dirs[0] / "hydra" / "help" / "blockprof.yaml")
    template = OmegaConf.create({"hydra": {"help": node}}).hydra.help.template  # resolves its ${hydra.help.*}
    defaults = _defaults(dirs[0])
    text = string.Template(str(template)).substitute(
        APP_CONFIG_GROUPS=_group_lines(USER_GROUPS, dirs, defaults, {}),
        HYDRA_CONFIG_GROUPS=_group_lines(HYDRA_GROUPS, dirs, defaults, {"hydra/launcher": ["basic"]}),
        FLAGS_HELP=Hydra.format_args_help(get_args_parser()),
        CONFIG="(python run.py --cfg job [overrides])",
    )
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `blockprof --help | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ------------------------------------------------------------------ completion
def _user_facing(word: str) -> bool:
    """Whether tab completion offers `word`: not class paths (`search._target_=`), not the
    internal schema/* groups or insight files, not the plugins' names for blockprof's
    launchers, not `space.name` and friends (set by choosing the option: space=pn)."""
    key, _, value = word.lstrip("+~").partition("=")
    parts = re.split(r"[./]", key)
    if "_target_" in parts or parts[0] in ("schema", "insight"):
        return False
    if key == "hydra/launcher" and value in _PLUGIN_LAUNCHERS:
        return False
    return not (len(parts) == 2 and parts[1] == "name" and parts[0] in USER_GROUPS)


def _complete() -> None:
    """Hydra's shell completion (it prints one line of words), cut to user-facing words."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _hydra_main()
    for line in buf.getvalue().splitlines():
        print(" ".join(w for w in line.split(" ") if w and _user_facing(w)))


# ------------------------------------------------------------------ command-line checks
def _refuse_deletions(args: list[str]) -> None:
    """`~key` deletes a key from the composed config; only the optional groups may go."""
    from blockprof.common.errors import UserError
    for a in args:
        if not a.startswith("~"):
            continue
        key = a[1:].split("=", 1)[0]
        if key in _DELETABLE or key.startswith(("hydra.", "hydra/")):
            continue
        if key in USER_GROUPS:
            raise UserError(f"cannot delete '{key}' ({a}): every run needs one; choose another ({key}=<option>)")
        raise UserError(f"cannot delete '{key}' ({a}): every key has a default that the run reads; "
                        f"set a value instead ({key}=<value>)")


def _check_sweeper(args: list[str]) -> None:
    """`hydra.sweeper.n_trials=0`: Optuna's sweeper would open the study (and the MLflow
    store) and then fail with "No trials are completed yet"."""
    from blockprof.common.errors import UserError
    for a in args:
        key, _, value = a.lstrip("+").partition("=")
        if key == "hydra.sweeper.n_trials":
            try:
                ok = int(value) >= 1
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"hydra.sweeper.n_trials is the number of Optuna trials to run: at least 1, not {value!r}")


def _quote_hint(line: str) -> str:
    """A hint for an override Hydra's grammar refused, when the shell is the likely cause: an
    unquoted space splits one override in two, and some characters need quotes."""
    m = re.search(r"Error parsing override '([^']*)'|LexerNoViableAltException: (\S+)", line)
    bad = (m.group(1) or m.group(2) or "") if m else ""
    if bad and "=" not in bad and not bad.startswith(("~", "+")):
        return (f"'{bad}' is not key=value: quote a value that holds spaces as one argument, "
                f"e.g. \"task.name=a {bad}\"")
    key, sep, value = bad.partition("=")
    if sep and _SHELL_CHARS.search(value):
        return f"quote the value: \"{key}='{value}'\" (the outer quotes are for the shell)"
    return ""


def main() -> None:
    global _job_started
    _job_started = False
    args = sys.argv[1:]
    if os.environ.get("HYDRA_FULL_ERROR"):
        register()
        _hydra_main()
        return
    # let Hydra's errors reach us instead of its multi-line report
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if ("--help" in args or "-h" in args) and "--hydra-help" not in args:
            _print_help(args)
            return
        # the schemas (each strategy's among them, which imports pandas; not needed for --help),
        # then the installed plugins: a plugin that fails to import is one error line
        register()
        _refuse_deletions(args)
        _check_sweeper(args)
        if ("-sc" in args or "--shell-completion" in args) and any(a.startswith("query=") for a in args):
            _complete()
        else:
            _hydra_main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        from blockprof.app.errors import one_line_user_error, printable
        line = one_line_user_error(exc)
        if line is None and not _job_started and str(exc).strip():
            # raised while Hydra read the command line, before any job: the command line's fault
            line = f"cannot parse override: {str(exc).strip().splitlines()[0]}"
        if line is not None and line.startswith("cannot parse override"):
            hint = _quote_hint(line)
            line += f"; {hint}" if hint else ""
        if line is None:
            raise
        print(f"error: {printable(line)}", file=sys.stderr)
        sys.exit(2)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
