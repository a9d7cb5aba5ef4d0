"""`python -m blockprof.sync`: the command-line entry of blockprof.infra.sync."""
import sys

from blockprof.infra.sync import main

if __name__ == "__main__":
    sys.exit(main())
