"""What every reader and writer of outside files shares: the located `InputError`, the `Rejected`
quarantine record, the strict/collect switch (`_reject`), and the byte-level helpers both sides need
(UTF-8 decoding with a located reason, pydantic errors as one line, atomic writes).

It sits below `chaptering.io` (transcript JSON/JSONL) and `chaptering.captions` (WebVTT, SRT, chapter
tracks) so that the two can share these without importing each other in a circle. Import the public
names from `chaptering.io`, their public home.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chaptering.schema import printable

_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """A bad outside record, located precisely so a person can find and fix it."""

    def __init__(self, path: str | Path, location: str, reason: str) -> None:
        self.path = printable(str(path))  # a file name with undecodable bytes must still print
        self.location = printable(location)
        self.reason = printable(reason)
        super().__init__(f"{self.path}:{location}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Prefect task results)
        return (type(self), (self.path, self.location, self.reason))


@dataclass(frozen=True)
class Rejected:
    """A quarantined record: one line of ``quarantine.jsonl``."""

    source: str
    location: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The quarantine line; always writable as UTF-8, whatever the bad input smuggled in."""
        return {k: printable(v) for k, v in asdict(self).items()}


def _reject(err: InputError, rejected: list[Rejected] | None) -> None:
    """Raise in strict mode, record and carry on in collect mode."""
    if rejected is None:
        raise err
    rejected.append(Rejected(source=err.path, location=err.location, reason=err.reason))


# ---------------------------------------------------------------------------------------------- reasons


def _validation_reason(exc: ValidationError, limit: int = 3) -> str:
    """pydantic's error list as one short line: field path + message, e.g. "segments.2.text: ..."."""
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] != "value_error" and (value is None or isinstance(value, (str, int, float, bool))):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            msg = f"{msg} (got {shown})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(parts) > limit:
        parts = parts[:limit] + [f"and {len(parts) - limit} more errors"]
    return "; ".join(parts)


def _utf8_reason(exc: UnicodeDecodeError, data: bytes, offset: int) -> str:
    return f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {offset + exc.start})"


def _decode(data: bytes, name: str) -> str:
    """Whole-file UTF-8 decoding; a BOM is accepted, anything else non-UTF-8 is refused."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(name, "file", _utf8_reason(e, data[skip:], skip)) from None


# ---------------------------------------------------------------------------------------------- writing


def _atomic_write(path: Path | str, chunks: Iterable[str]) -> None:
    """Write to a temporary file beside the target, fsync, then rename: readers never see half a file,
    and a crash after the rename cannot leave an empty one (the watermarks rely on that)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
