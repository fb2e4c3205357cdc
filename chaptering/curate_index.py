"""Near-duplicate indexes over MinHash signatures: a small in-memory one and a bounded on-disk one.

`NearDupIndex` (datasketch's MinHashLSH in memory) serves the held-out set's contamination guard: a few
hundred transcripts. `SeenIndex` is what curation remembers of everything it accepted (ids, content
hashes, LSH bands, signatures) in one SQLite file, so memory stays at SQLite's page cache however large
the corpus grows (the in-memory index took 573 MB at 100k transcripts). Both use datasketch's band
layout and the same Jaccard check, so they answer alike; `SeenIndex` breaks ties between equally similar
candidates by insertion order, where a Python set's order would vary with the hash seed.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chaptering.curate_text import content_words, minhash, shingle_hashes
from chaptering.schema import Transcript

if TYPE_CHECKING:
    from datasketch import LeanMinHash, MinHash


def hashvalues(sig: MinHash | np.ndarray) -> np.ndarray:
    """A signature as the uint32 array it is stored, shipped and compared as (`minhash` uses datasketch's
    32-bit scheme: 512 bytes a signature at 128 permutations)."""
    values = np.asarray(getattr(sig, "hashvalues", sig))
    if values.dtype != np.uint32:
        raise ValueError(f"expected a 32-bit MinHash signature (scheme affine32), got dtype {values.dtype}")
    return values


def is_empty(values: np.ndarray) -> bool:
    """datasketch's `MinHash.is_empty`: no shingle was ever added (every slot still at its maximum)."""
    return bool(np.all(values == np.uint32(0xFFFFFFFF)))


class NearDupIndex:
    """MinHash LSH over word 5-shingles: near-duplicate lookups in about constant time per record.

    Keeps only a lean signature per indexed transcript in memory (~1.5 KB a transcript with the LSH
    tables): right for the held-out set, not for the whole corpus (see `SeenIndex`).
    """

    def __init__(self, threshold: float, num_perm: int, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sigs: dict[str, LeanMinHash] = {}

    def __len__(self) -> int:
        return len(self._sigs)

    def signature(self, t: Transcript, words: list[str] | None = None) -> MinHash:
        return minhash(shingle_hashes(content_words(t) if words is None else words), self.num_perm, self.seed)

    def match(self, t: Transcript | MinHash) -> tuple[str, float] | None:
        """(id, estimated Jaccard) of the most similar indexed transcript at or above the threshold."""
        sig = self.signature(t) if isinstance(t, Transcript) else t
        if sig.is_empty():
            return None
        best: tuple[str, float] | None = None
        for key in self._lsh.query(sig):  # LSH candidates, then checked: bands let some pairs below through
            j = sig.jaccard(self._sigs[key])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best

    def query(self, t: Transcript | MinHash) -> str | None:
        """Id of an indexed near-duplicate of `t`, or None."""
        hit = self.match(t)
        return hit[0] if hit else None

    def add(self, t: Transcript, sig: MinHash | None = None) -> None:
        from datasketch import LeanMinHash

        sig = self.signature(t) if sig is None else sig
        if t.id in self._sigs or sig.is_empty():
            return
        lean = LeanMinHash(sig)
        self._lsh.insert(t.id, lean)
        self._sigs[t.id] = lean


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hashes (h TEXT PRIMARY KEY, id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sigs (rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bands (key BLOB NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY (key, rid)) WITHOUT ROWID;
"""


COMMIT_EVERY = 5000


class SeenIndex:
    """What curation has accepted so far, on disk: ids, content hash -> first id, MinHash LSH bands.

    A band key is a 128-bit digest of the band's slice of the signature (datasketch keys on the raw
    slice; a digest collision would need ~2^64 bands). Writes stay in one open transaction: this file is
    scratch for one run, so it needs no journal and no fsync. Committing every `COMMIT_EVERY` adds hands
    the written pages to the file, so the page cache (`cache_mb`) is the bound on memory.
    """

    def __init__(self, path: Path, threshold: float, num_perm: int, cache_mb: int = 32) -> None:
        from datasketch import MinHashLSH

        self.path, self.threshold, self.num_perm = Path(path), threshold, num_perm
        self.ranges = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{cache_mb * 1024}", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA)
        self.db.execute("BEGIN")
        self._marks = ",".join("?" * len(self.ranges))
        self._pending = 0

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM sigs").fetchone()[0]

    def has_id(self, tid: str) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (tid,)).fetchone() is not None

    def hash_owner(self, h: str) -> str | None:
        """The first id accepted with content hash `h`, if any."""
        row = self.db.execute("SELECT id FROM hashes WHERE h = ?", (h,)).fetchone()
        return row[0] if row else None

    def _keys(self, values: np.ndarray) -> list[bytes]:
        return [hashlib.blake2b(values[s:e].tobytes(), digest_size=16, person=b"band%d" % i).digest()
                for i, (s, e) in enumerate(self.ranges)]

    def match(self, sig: MinHash | np.ndarray) -> tuple[str, float] | None:
        """(id, estimated Jaccard) of the most similar indexed signature at or above the threshold;
        among equals, the one indexed first."""
        values = hashvalues(sig)
        if is_empty(values):
            return None
        rows = self.db.execute(
            f"SELECT s.id, s.sig FROM sigs s WHERE s.rid IN (SELECT rid FROM bands WHERE key IN ({self._marks})) "
            "ORDER BY s.rid", self._keys(values))
        best: tuple[str, float] | None = None
        n = float(len(values))
        for tid, blob in rows:
            j = float(np.count_nonzero(values == np.frombuffer(blob, dtype=np.uint32))) / n
            if j >= self.threshold and (best is None or j > best[1]):
                best = (tid, j)
        return best

    def add(self, tid: str, h: str, sig: MinHash | np.ndarray) -> None:
        """Remember an accepted (or known) transcript; a repeated id or hash keeps its first owner."""
        values = hashvalues(sig)
        self.db.execute("INSERT OR IGNORE INTO ids VALUES (?)", (tid,))
        self.db.execute("INSERT OR IGNORE INTO hashes VALUES (?, ?)", (h, tid))
        if is_empty(values):
            return
        cur = self.db.execute("INSERT OR IGNORE INTO sigs (id, sig) VALUES (?, ?)", (tid, values.tobytes()))
        if cur.rowcount:
            rid = cur.lastrowid
            self.db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)", ((k, rid) for k in self._keys(values)))
        self._pending += 1
        if self._pending >= COMMIT_EVERY:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._pending = 0
