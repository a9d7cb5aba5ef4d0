"""The `blockprof` command (and `python run.py`): Hydra composes the packaged configs
(`pkg://blockprof.conf`, the repository's conf/ folder) and blockprof.app runs the task."""
from __future__ import annotations

import hydra


@hydra.main(version_base="1.3", config_path="pkg://blockprof.conf", config_name="config")
def _hydra_main(cfg):
    from blockprof.app.main import main_entry  # imported late: `--help` and completion stay fast
    return main_entry(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
