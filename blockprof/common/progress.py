"""Progress bars for long work: shown on a terminal, quiet otherwise (CI, tests, pipes)."""
import os
import sys

from tqdm.auto import tqdm


def progress(iterable, desc: str = "", total: int | None = None, enabled: bool = True):
    show = enabled and sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(iterable, desc=desc, total=total, disable=not show, leave=False)
