"""manifest.json of an exported folder: what is in it (sizes, sha256), where it came from, and the
settings the runtime must use (decoder calibration, prompt version, quantisations, stop tokens).

Written by chaptering.export and read by chaptering.edge, so both sides agree on one format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT = "chaptering-edge/1"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} for every file under `folder` except the manifest itself."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def total_bytes(manifest: dict[str, Any]) -> int:
    """The size of the exported folder as its manifest lists it."""
    return sum(int(f["bytes"]) for f in manifest["files"].values())


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an exported folder, refused if it is missing, malformed or of another format."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE} (not a folder written by `chaptering export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, this runtime reads {FORMAT!r}")
    return manifest


def verify(folder: Path, manifest: dict[str, Any], checksums: bool = False) -> None:
    """Every listed file is present with its size (and, with `checksums`, its sha256): a truncated copy or
    a swapped file is refused before it is loaded. Sizes are instant; hashing ~250 MB takes ~0.5 s."""
    folder = Path(folder)
    for rel, entry in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: {rel} is listed in {MANIFEST_FILE} but missing")
        if path.stat().st_size != entry["bytes"]:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, {MANIFEST_FILE} says {entry['bytes']}")
        if checksums and sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from {MANIFEST_FILE} (corrupted or replaced)")
