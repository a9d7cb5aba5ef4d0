"""`python -m blockprof.latency_models list`: the command-line entry of the latency
predictor registry in blockprof.infra.models (list versions, move the champion alias)."""
import sys

from blockprof.infra.models import main

if __name__ == "__main__":
    sys.exit(main())
