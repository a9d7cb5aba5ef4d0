"""The command device: any vendor's timing tool, run on each exported subnet.

`device.latency.command` is a shell command with a placeholder for the file to time:
`{onnx}` (blockprof's ONNX export) or `{tflite}` (the export converted by
`device.latency.convert`, a second template that writes `{tflite}` from `{onnx}`, run once
per arch). blockprof substitutes the paths (shell-quoted: write them bare), runs the
command with /bin/sh, and reads the latency from what it printed (stdout and stderr
together) with `device.latency.pattern`: a regular expression whose group `value` (or
first group) is the number and group `unit` (or second group; else `device.latency.unit`)
its unit, us / ms / s, converted to ms; the last match counts. Named patterns for the
usual tools: `benchmark_model` (TensorFlow Lite's, its `Inference (avg)` in us) and
`trtexec` (TensorRT's, the median GPU compute time).

How it maps onto the timing protocol (blockprof.metrics.timing): one call of the tool is
one timing. The tool does its own warmup and repeats (its flags) and reports one number,
so a round runs the tool once on every file of the chunk, the reference subnets
included, in a fresh random order; drift rescaling and the median over rounds work as
for the local engines. Fewer rounds than locally are usually enough (task.rounds=3,
task.warmup=0: the tool warms up itself); the protocol records `clock: tool`.

A tool that exits non-zero, times out, or prints nothing the pattern matches is one
line naming the file and showing the tool's last line.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.metrics.engines import _OnnxEngine

logger = logging.getLogger(__name__)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
PATTERNS = {
    # TensorFlow Lite benchmark_model: "Inference timings in us: Init: ..., First inference: ...,
    # Warmup (avg): ..., Inference (avg): 1234.5"
    "benchmark_model": rf"Inference timings in (?P<unit>us|ms)\b.*?Inference \(avg\): (?P<value>{_NUM})",
    # TensorRT trtexec: "[I] GPU Compute Time: min = ... ms, max = ..., mean = ..., median = 0.81 ms, ..."
    "trtexec": rf"GPU Compute Time: .*?median = (?P<value>{_NUM}) (?P<unit>us|ms|s)\b",
}
UNITS_MS = {"us": 1e-3, "µs": 1e-3, "μs": 1e-3, "usec": 1e-3, "microseconds": 1e-3,
            "ms": 1.0, "msec": 1.0, "milliseconds": 1.0, "s": 1e3, "sec": 1e3, "seconds": 1e3}
PLACEHOLDERS = ("{onnx}", "{tflite}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def fill(template: str, files: dict[str, Path]) -> str:
    """The template with each placeholder replaced by its shell-quoted path (plain replace, not
    str.format: braces elsewhere - awk, shell `${x}` - stay as written)."""
    out = template
    for key, path in files.items():
        out = out.replace("{" + key + "}", shlex.quote(str(path)))
    return out


def compile_pattern(pattern: str, unit: str | None) -> re.Pattern:
    text = PATTERNS.get(pattern, pattern)
    try:
        rx = re.compile(text, re.DOTALL)
    except re.error as e:
        raise UserError(f"command device: device.latency.pattern is not a regular expression ({e}): "
                        f"{pattern}") from None
    if rx.groups < 1:
        raise UserError("command device: device.latency.pattern needs a group around the number, e.g. "
                        "'time: ([0-9.]+) (ms|us)'")
    if "unit" not in rx.groupindex and rx.groups < 2 and (unit or "").lower() not in UNITS_MS:
        raise UserError(f"command device: device.latency.unit must be one of {sorted(set(UNITS_MS))} "
                        f"when the pattern has no unit group, not '{unit}'")
    return rx


def parse_latency_ms(output: str, rx: re.Pattern, unit: str | None) -> float | None:
    """The last match of `rx` in `output`, in ms; None when nothing matches."""
    matches = list(rx.finditer(output))
    if not matches:
        return None
    m = matches[-1]
    value = m.group("value") if "value" in rx.groupindex else m.group(1)
    if "unit" in rx.groupindex:
        u = m.group("unit")
    elif rx.groups >= 2 and "value" not in rx.groupindex:
        u = m.group(2)
    else:
        u = unit
    scale = UNITS_MS.get((u or "").strip().lower()) or UNITS_MS.get((u or "").strip())
    if scale is None:
        raise UserError(f"command device: unknown latency unit '{u}' in the tool's output "
                        f"(known: {sorted(set(UNITS_MS))})")
    try:
        return float(value) * scale
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ExportedFiles:
    onnx: Path
    tflite: Path | None = None

    def placeholders(self) -> dict[str, Path]:
        return {"onnx": self.onnx, **({"tflite": self.tflite} if self.tflite is not None else {})}


class CommandEngine(_OnnxEngine):
    """prepare(arch): export (and convert); time_once(files): one call of the vendor's tool."""
    name = "command"

    def __init__(self, space, batch_size: int = 1, cache_dir="onnx_cache", *, command: str | None,
                 pattern: str = "benchmark_model", unit: str | None = "ms", convert: str | None = None,
                 timeout_s: float = 600.0):
        super().__init__(space, 1, "wall", batch_size, cache_dir=cache_dir)
        if not command or not str(command).strip():
            raise UserError("command device: set device.latency.command to the command that times one file, "
                            "with {onnx} or {tflite} where the file goes")
        self.command, self.convert = str(command), (str(convert) if convert else None)
        if not any(p in self.command for p in PLACEHOLDERS):
            raise UserError(f"command device: device.latency.command has no {{onnx}} or {{tflite}} placeholder, "
                            f"so the tool would never see the subnet: {self.command}")
        self.wants_tflite = "{tflite}" in self.command
        if self.wants_tflite and (not self.convert or "{onnx}" not in self.convert or "{tflite}" not in self.convert):
            raise UserError("command device: the command times {tflite}: set device.latency.convert to a command "
                            "that writes {tflite} from {onnx} (blockprof exports ONNX only)")
        for template, key in ((self.command, "command"), (self.convert, "convert")):
            if template:
                self._check_program(template, key)
        self.unit = unit
        self.rx = compile_pattern(str(pattern), unit)
        self.pattern = str(pattern)
        self.timeout_s = float(timeout_s)

    @staticmethod
    def _check_program(template: str, key: str) -> None:
        """Fail at start, not after the first export, when the tool is not there at all."""
        try:
            words = shlex.split(template)
        except ValueError as e:
            raise UserError(f"command device: device.latency.{key} is not a valid shell command ({e}): {template}") \
                from None
        first = next((w for w in words if not re.match(r"[A-Za-z_][A-Za-z0-9_]*=", w)), None)  # skip VAR=value
        if first and not any(c in first for c in "{}$`|;&<>()") and shutil.which(first) is None:
            raise UserError(f"command device: '{first}' (device.latency.{key}) is not a program on this "
                            "machine's PATH")

    def _run(self, cmd: str, file: Path, doing: str) -> str:
        # its own session, so a timeout stops the whole tool (adb, a wrapper script), not just the shell
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            raw, _ = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raw, _ = proc.communicate()
            raise UserError(f"command device: {doing} {file} took over {self.timeout_s:g} s "
                            f"(device.latency.timeout_s); last line: {_last_line(raw.decode(errors='replace'))}") \
                from None
        out = raw.decode(errors="replace")
        if proc.returncode != 0:
            raise UserError(f"command device: {doing} {file} failed (exit {proc.returncode}); "
                            f"last line: {_last_line(out)}")
        return out

    def _tflite(self, onnx: Path) -> Path:
        tfl = onnx.with_suffix(".tflite")
        if not tfl.is_file():
            files = {"onnx": onnx, "tflite": tfl}
            try:
                self._run(fill(self.convert, files), onnx, "converting")
            except UserError:
                tfl.unlink(missing_ok=True)
                raise
            if not tfl.is_file():
                raise UserError(f"command device: device.latency.convert exited 0 but wrote no {tfl}")
        return tfl

    def prepare(self, arch) -> ExportedFiles:
        onnx = self.onnx(arch)
        return ExportedFiles(onnx, self._tflite(onnx) if self.wants_tflite else None)

    def time_once(self, files: ExportedFiles) -> float:
        main = files.tflite if self.wants_tflite else files.onnx
        out = self._run(fill(self.command, files.placeholders()), main, "timing")
        ms = parse_latency_ms(out, self.rx, self.unit)
        if ms is None or not ms > 0:
            raise UserError(f"command device: no latency in the output of timing {main} "
                            f"(pattern {self.pattern}); last line: {_last_line(out)}")
        return ms

    def info(self) -> dict:
        # the tool's hardware is not this machine's: no CPU model is claimed for it
        return {"engine": self.name, "cpu": "(the timing tool's device)", "command": self.command,
                "pattern": self.pattern,
                **({"convert": self.convert} if self.convert else {})}

    @classmethod
    def from_config(cls, lat, space, *, batch_size: int, cache_dir):
        return cls(space, batch_size, cache_dir=cache_dir, command=lat.get("command"),
                   pattern=str(lat.get("pattern") or "benchmark_model"), unit=lat.get("unit"),
                   convert=lat.get("convert"), timeout_s=float(lat.get("timeout_s") or 600))
