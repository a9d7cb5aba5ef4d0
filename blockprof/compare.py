"""`python -m blockprof.compare`: the command-line entry of blockprof.infra.compare, with the
app's device checks (blockprof.app.device_plan) for `--devices`."""
import sys

from blockprof.infra.compare import main


def _plan_devices(*args, **kw):
    from blockprof.app.device_plan import plan_devices  # composes configs: imported only for --devices
    return plan_devices(*args, **kw)


def run(argv=None) -> int:
    return main(argv, plan_devices=_plan_devices)


if __name__ == "__main__":
    sys.exit(run())
