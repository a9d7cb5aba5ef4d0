"""Progress for long work: a tqdm bar on a terminal; without one (nohup, SLURM, CI, pipes)
a log line every `every_s` seconds, so redirected output still shows how far a run got."""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("blockprof.progress")


class _LogProgress:
    """Counts like tqdm (iterated, or driven by `update(n)`) and logs
    `desc: done/total (rate/s, eta)` at most every `every_s` seconds."""

    def __init__(self, iterable, desc: str, total: int | None, every_s: float):
        self.iterable, self.desc, self.every_s = iterable, desc or "progress", every_s
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, 0
        self._t0 = self._last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self):
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = self.n / max(now - self._t0, 1e-9)
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d (%.3g/s, about %.0f s left)", self.desc, self.n, self.total, rate, left)
        else:
            log.info("%s: %d (%.3g/s)", self.desc, self.n, rate)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable, desc: str = "", total: int | None = None, enabled: bool = True, every_s: float = 30.0):
    if not enabled:
        return tqdm(iterable, desc=desc, total=total, disable=True)
    if sys.stderr.isatty() and not os.environ.get("CI"):
        return tqdm(iterable, desc=desc, total=total, leave=False)
    return _LogProgress(iterable, desc, total, every_s)
