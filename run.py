"""blockprof entry point: `python run.py space=mbv3 device=npu task=profile`.

Hydra composes conf/; blockprof.app runs the task. Group typos are caught here,
before Hydra starts, so they end in one line."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("space", "device", "metric", "search", "task", "tracking", "data")


def check_group_overrides(argv: list[str]) -> None:
    """`space=mbv3x` -> one line naming the options, not Hydra's multi-line report."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for v in value.split(","):  # multirun lists: space=mbv3,pn
            v = v.strip()
            if v and not v.startswith(("glob(", "choice(", "range(")) and v not in options:
                print(f"error: unknown {key} '{v}' (choose from: {', '.join(options)})", file=sys.stderr)
                sys.exit(2)


def check_key_overrides(argv: list[str]) -> None:
    """`task.num_archz=5` -> one line naming the keys that exist, not Hydra's report."""
    keyed = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))
             and a.split("=", 1)[0] not in GROUPS and "/" not in a.split("=", 1)[0]]
    if not keyed:
        return
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    groups = [f"{k}={v.split(',')[0]}" for k, v in (a.split("=", 1) for a in argv if "=" in a)
              if k.lstrip("+~") in GROUPS]  # the first option of a sweep list decides the keys
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=groups)
    missing = object()
    for arg in keyed:
        key = arg.split("=", 1)[0]
        if OmegaConf.select(cfg, key, default=missing, throw_on_missing=False) is missing:
            parent = OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else cfg
            known = ", ".join(str(k) for k in parent.keys()) if isinstance(parent, DictConfig) else ""
            print(f"error: unknown config key '{key}'" + (f" (known here: {known})" if known else ""),
                  file=sys.stderr)
            sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg):
    from blockprof.app import main_entry  # imported late: `--help` stays fast
    return main_entry(cfg)


def main() -> None:
    check_group_overrides(sys.argv[1:])
    check_key_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
