"""Watermarks: what the last successful night consumed, and what this run has read so far.

Per file its sha256 and size, for the feedback store the last event id consumed. Reading moves only the
*pending* state; it reaches the file (atomically, fsynced) only on `commit`, once everything downstream
has succeeded, so a run that fails half-way re-reads the same input next time instead of losing it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from chaptering.iobase import _atomic_write


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """A crash leaves the old watermarks, never half a file (the project's one atomic writer)."""
    _atomic_write(path, [json.dumps(data, indent=1, sort_keys=True)])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        # Not silently "empty": that would re-ingest every feedback event into the corpus twice.
        raise ValueError(f"{path}: watermarks are not valid JSON ({exc}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: watermarks must be a JSON object")
    return data


class Watermarks:
    """Committed watermarks (what the last successful run consumed) and this run's pending ones.

    Readers compare against the committed state and write the pending one; nothing reaches the file
    until `commit`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._committed: dict[str, Any] = _read_json(self.path) if self.path.exists() else {}
        self._pending: dict[str, Any] = copy.deepcopy(self._committed)
        self._full = False

    def get(self, key: str) -> dict[str, Any]:
        """The committed watermark of a source ({} after `reset`, i.e. read everything)."""
        return {} if self._full else copy.deepcopy(self._committed.get(key, {}))

    def pending(self, key: str) -> dict[str, Any]:
        """This run's watermark of a source, live: readers update it as they consume input."""
        return self._pending.setdefault(key, {})

    def reset(self) -> None:
        """Full re-read (rebuilding the dataset from scratch): ignore the committed state; the pending
        state then holds only what this run saw."""
        self._full = True
        self._pending = {}

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the pending state: what `commit` would write."""
        return copy.deepcopy(self._pending)

    def commit(self) -> None:
        """Persist the pending state: call only once everything downstream of the read has succeeded."""
        _write_json_atomic(self.path, self._pending)
        self._committed = copy.deepcopy(self._pending)
        self._full = False

    def save_pending(self, path: Path | str) -> Path:
        """Park the pending state in a run folder, for a later `commit_pending` in another process."""
        _write_json_atomic(Path(path), self._pending)
        return Path(path)

    def commit_pending(self, path: Path | str) -> bool:
        """Commit a state parked by `save_pending`; False (nothing moves) when there is none."""
        path = Path(path)
        if not path.exists():
            return False
        self._pending = _read_json(path)
        self.commit()
        return True
