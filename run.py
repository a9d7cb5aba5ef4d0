"""`python run.py space=mbv3 device=npu task=profile` from a clone: the same as the
installed `blockprof` command."""
from blockprof.cli import main

if __name__ == "__main__":
    main()
