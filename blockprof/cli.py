"""The `blockprof` command (and `python run.py`): Hydra composes the packaged configs
(`pkg://blockprof.conf`, the repository's conf/ folder) and blockprof.app runs the task.

Hydra reports a composition or validation error as a multi-line message (and a traceback
for some); here every such user error becomes one `error:` line and exit code 2, the
same as the app's own checks. `HYDRA_FULL_ERROR=1` still shows Hydra's full report.
"""
from __future__ import annotations

import os
import re
import sys

import hydra
from omegaconf import OmegaConf

from blockprof.app.schema import register

# the built-in schemas at import (a sweep's worker process imports this module too); the
# plugins in main(), where a broken one becomes one error line
register(plugins=False)


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


def main() -> None:
    global _job_started
    _job_started = False
    if os.environ.get("HYDRA_FULL_ERROR"):
        register()
        _hydra_main()
        return
    # let Hydra's errors reach us instead of its multi-line report
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # the schemas, then the installed plugins: a plugin that fails to import is one error line
        register()
        _hydra_main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        from blockprof.app.errors import one_line_user_error
        line = one_line_user_error(exc)
        if line is None and not _job_started and str(exc).strip():
            # raised while Hydra read the command line, before any job: the command line's fault
            line = f"cannot parse override: {str(exc).strip().splitlines()[0]}"
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
