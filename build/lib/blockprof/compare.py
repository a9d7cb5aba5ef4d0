"""`python -m blockprof.compare`: the command-line entry of blockprof.infra.compare."""
import sys

from blockprof.infra.compare import main

if __name__ == "__main__":
    sys.exit(main())
