"""Progress for long work: a tqdm bar on a terminal; without one (nohup, SLURM, CI, pipes)
log lines - one when the phase starts, then one every `every_s` seconds whether or not
work was counted meanwhile (a phase whose units take minutes still shows it is alive),
and one at the end - so redirected output and run.log show how far a run got."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

from tqdm.auto import tqdm

log = logging.getLogger("blockprof.progress")
# open counters, outermost first (weak: a counter abandoned by an exception neither lingers nor
# keeps later ones quiet); one inside another is quiet unless it lasts
_ACTIVE: "weakref.WeakSet[_LogProgress]" = weakref.WeakSet()
DEFAULT_FMT = "{desc}: {n} of {total} {unit}{eta}"


class _LogProgress:
    """Counts like tqdm (iterated, or driven by `update(n)`) and logs `fmt` (fields: desc, n,
    total, unit, eta, and any `set_postfix` keys) at the start, every `every_s` seconds
    from a timer thread, and at `close`."""

    def __init__(self, iterable, desc: str, total: int | None, every_s: float, unit: str = "",
                 fmt: str | None = None, initial: int = 0, postfix: dict | None = None):
        self.iterable, self.desc, self.every_s, self.unit = iterable, desc or "progress", every_s, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.fmt = fmt or DEFAULT_FMT
        self.postfix: dict = dict(postfix or {})
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._closed = False
        # the outermost phase says when it starts and ends; a counter inside it (a batch of a
        # search) only speaks when it runs long enough for a timed line
        self.quiet = bool(_ACTIVE)
        self.beats = 0
        _ACTIVE.add(self)
        if not self.quiet:
            self._emit(start=True)
        # the timer holds the counter weakly: once nothing else does, the timer ends
        self._timer = threading.Thread(target=_beat, args=(weakref.ref(self), self._stop, every_s),
                                       name=f"progress:{self.desc}", daemon=True)
        self._timer.start()

    def __del__(self):
        self._stop.set()

    def _emit(self, start: bool = False, end: bool = False) -> None:
        elapsed = time.monotonic() - self._t0
        done = self.n - self.initial
        if start:
            eta = ", started"
        elif end:
            eta = f", done in {elapsed:.0f} s"
        elif self.total and done > 0:
            eta = f", {elapsed:.0f} s so far, about {(self.total - self.n) * elapsed / done:.0f} s left"
        else:
            eta = f", {elapsed:.0f} s so far"
        fields = {"desc": self.desc, "n": self.n, "total": self.total if self.total else "?",
                  "unit": self.unit, "eta": eta, **self.postfix}
        try:
            line = self.fmt.format(**fields)
        except (KeyError, IndexError):
            line = DEFAULT_FMT.format(**fields)
        log.info(" ".join(line.split()).replace(" ,", ","))

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        self.postfix.update(kwargs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        _ACTIVE.discard(self)
        if not self.quiet or self.beats:
            self._emit(end=True)


def _beat(ref, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        bar = ref()
        if bar is None or bar._closed:
            return
        bar.beats += 1
        bar._emit()
        del bar


def progress(iterable=None, desc: str = "", total: int | None = None, enabled: bool = True, every_s: float = 30.0,
             unit: str = "", fmt: str | None = None, initial: int = 0, postfix: dict | None = None):
    """A progress counter over `iterable` (or driven by `update(n)`) against `total`: a bar on a
    terminal, log lines every `every_s` seconds without one; nothing when not `enabled`.
    `fmt` (log lines): fields desc, n, total, unit, eta and the `postfix` / `set_postfix` keys."""
    if not enabled:
        return tqdm(iterable, desc=desc, total=total, disable=True, initial=initial)
    if sys.stderr.isatty() and not os.environ.get("CI"):
        return tqdm(iterable, desc=desc, total=total, leave=False, initial=initial, unit=unit or "it", postfix=postfix)
    return _LogProgress(iterable, desc, total, every_s, unit=unit, fmt=fmt, initial=initial, postfix=postfix)


def phase(desc: str, total: int | None = None, unit: str = "", every_s: float = 30.0):
    """A phase done in one call (calibration): `with phase("calibration", 3, "reference subnets") as p:`
    logs its start, every `every_s` seconds while it runs, and its end."""
    return _Phase(desc, total, unit, every_s)


class _Phase:
    def __init__(self, desc, total, unit, every_s):
        self.args = (desc, total, unit, every_s)
        self.bar = None

    def __enter__(self):
        desc, total, unit, every_s = self.args
        self.bar = _LogProgress(None, desc, total, every_s, unit=unit,
                                fmt="{desc}: {total} {unit}{eta}")
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()
        return False
