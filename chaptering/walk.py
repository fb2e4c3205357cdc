"""Which files an ingest reads: a folder walk that quarantines, with why, every entry it does not read.

Hidden files, other file types, FIFOs and devices, and symlinks that leave the input folder are
reported as skipped rather than silently passed over, so an operator sees why a file never arrived.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from chaptering.io import InputError, Rejected, check_file_name

SUFFIXES = (".jsonl", ".json", ".vtt", ".srt")
SKIPPED = "skipped"  # the reason kind of every file a folder walk does not read


def _skip(rejected: list[Rejected], path: Path | str, why: str) -> None:
    rejected.append(Rejected(source=str(path), location="file", reason=f"{SKIPPED}: {why}"))


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` (resolved) lies in `root` (resolved)."""
    return path == root or root in path.parents


def _walk(root: Path, rejected: list[Rejected], follow_symlinks: bool) -> list[Path]:
    """Readable transcript files under `root`, sorted; every other entry is quarantined with why.

    Hidden entries (half-written temp files, .git) and other file types are reported, not read; a
    symlink is followed only when it stays inside `root` (or `follow_symlinks`), so a link cannot make
    the nightly read a system file; FIFOs and devices, which would block a read, are refused.
    """
    top = root.resolve()
    found: list[Path] = []
    seen_dirs: set[Path] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = folder.resolve()
        if real in seen_dirs:
            continue  # a symlink loop, or two links to one folder: walked once
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            _skip(rejected, folder, f"folder not readable ({exc.strerror or exc})")
            continue
        for entry in entries:
            path = Path(entry.path)
            why = _skip_reason(entry, path, top, follow_symlinks)
            if why is not None:
                _skip(rejected, path, why)
            elif entry.is_dir():
                stack.append(path)
            else:
                found.append(path)
    return sorted(found)


def _skip_reason(entry: os.DirEntry, path: Path, top: Path, follow_symlinks: bool) -> str | None:
    """Why a folder entry is not read (None: read it, or walk into it)."""
    try:
        check_file_name(entry.name)
    except InputError as err:
        return err.reason
    if entry.name.startswith("."):
        return "hidden entry (a name starting with '.' is a temporary or private file), not read"
    if entry.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "broken symlink"
        if not follow_symlinks and not _inside(target, top):
            return "symlink to a path outside the input folder, not followed"
    try:
        if entry.is_dir():
            return None
        if not entry.is_file():
            return "not a regular file (FIFO, socket or device)"
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        kind = "compressed file (decompress it first)" if suffix in (".gz", ".bz2", ".xz", ".zip", ".zst") \
            else f"unsupported file type {suffix or '(none)'!r}"
        return f"{kind}; folder ingest reads {', '.join(SUFFIXES)}"
    return None


def _files(paths: Iterable[Path], rejected: list[Rejected], follow_symlinks: bool = False) -> list[Path]:
    """Files to read, in a deterministic order: folders are walked recursively (`_walk` quarantines
    what it does not read); files named explicitly are read whatever their type (the reader quarantines
    an unsupported one). Missing paths are a configuration error and raise."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = _walk(p, rejected, follow_symlinks)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"ingest input {p} does not exist")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes), read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
