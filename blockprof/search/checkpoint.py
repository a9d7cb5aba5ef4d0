"""Crash-safe search checkpoints: an append-only journal plus a small state file.

Each finished iteration appends one frame (the archs it scored and the search's state
after it, JSON, one line) to `journal.jsonl`, flushes it to disk, then atomically
replaces `state.json` (the iteration, the generator's state, the strategy's state, the
history and the journal's length in bytes). The per-frame states let a finished search
continue to a larger budget from the last iteration the smaller budget did not touch. A run killed anywhere - mid-append, between the two
writes, mid-replace - restarts from the last state file: journal bytes past its
recorded length are cut off, so no evaluation is lost or counted twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from blockprof.common.fileio import atomic_write_text

FORMAT = 2


class Checkpoint:
    """`durable`: fsync every commit (survives a power loss too). Without it a commit
    is still atomic for a killed process (the OS keeps what was written), only faster."""

    def __init__(self, folder: Path, durable: bool = True):
        self.durable = durable
        self.dir = Path(folder) / "checkpoint"
        self.journal = self.dir / "journal.jsonl"
        self.state_path = self.dir / "state.json"
        self.frames = 0

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> tuple[dict, list[dict]]:
        """(state, frames) of the last committed iteration; cuts any uncommitted tail."""
        state = json.loads(self.state_path.read_text())
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{self.state_path.name}: checkpoint format "
                             f"{state.get('format') if isinstance(state, dict) else None} is not {FORMAT}")
        lost = [k for k in ("journal_bytes", "frames", "fingerprint", "iteration", "stall", "stop_reason", "rng",
                            "strategy", "queries") if k not in state]
        if lost:
            raise ValueError(f"{self.state_path.name} lacks {', '.join(lost)}")
        size = int(state["journal_bytes"])
        if self.journal.stat().st_size < size:  # lost committed frames: never pad it with zeros
            raise ValueError(f"{self.journal.name} holds {self.journal.stat().st_size} bytes, "
                             f"{self.state_path.name} records {size}")
        with open(self.journal, "r+b") as f:
            f.truncate(size)
            f.seek(0)
            lines = f.read().splitlines()
        frames = [json.loads(line) for line in lines]
        if len(frames) != state["frames"]:
            raise ValueError(f"journal holds {len(frames)} frames, state expects {state['frames']}")
        self.frames = len(frames)
        return state, frames

    def commit(self, frame: dict, state: dict) -> dict:
        """Append `frame`, then record `state` (with the journal's new length)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(frame, separators=(",", ":")) + "\n").encode()
        with open(self.journal, "ab") as f:
            f.write(line)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
            size = f.tell()
        state = dict(state, format=FORMAT, journal_bytes=size, frames=self.frames + 1)
        atomic_write_text(self.state_path, json.dumps(state), durable=self.durable)
        self.frames += 1
        return state

    def rollback(self, keep: int, state: dict) -> None:
        """Make the first `keep` frames the checkpoint, with `state` as its state (a search
        continued to a larger budget redoes the iterations the smaller one cut short).
        One atomic write: the state records the shorter journal, and `load` cuts the rest."""
        with open(self.journal, "rb") as f:
            size = sum(len(line) for line in f.read().splitlines(keepends=True)[:keep])
        state = dict(state, format=FORMAT, journal_bytes=size, frames=keep)
        atomic_write_text(self.state_path, json.dumps(state), durable=self.durable)
        self.load()  # cuts the journal and sets the frame count

    def start_fresh(self) -> None:
        """Drop a stale journal left without a state file (killed during the first commit)."""
        if self.journal.exists() and not self.state_path.exists():
            self.journal.unlink()
