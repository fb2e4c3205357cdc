"""Rebuild data/ from ../shared/data (run from the repo root): `python data/make_sample.py`.

Deterministic: each source is ordered by sha256 of the transcript id and the first `HELDOUT[domain]`
go to the held-out set (with `meta.domain`), the rest to training, so the split never drifts. Only the
train-side files of ../shared/data are read; the parts its README keeps back are not there to read.
Held-out sizes are chosen so each domain's 95 % interval on its primary F1 is about ±0.07 where the
source is large enough (a per-transcript standard deviation of ~0.25 needs ~50); lectures (17) and work
sessions (5) are too small for that and their intervals say so.
"""

import hashlib
import json
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent

# domain -> (source file under ../shared/data, held-out count, training file or None)
SOURCES = {
    "short": ("video/vidchapters-short.jsonl", 60, "vidchapters-short.jsonl"),
    "talks": ("video/rawkode.jsonl", 40, "rawkode.jsonl"),
    "lectures": ("video/lectures.jsonl", 7, "lectures.jsonl"),
    "meetings": ("qmsum/qmsum-val.jsonl", 35, None),  # QMSum validation: all held out
    "work": ("video/tinyrec-dev.jsonl", 3, "tinyrec-dev.jsonl"),
}


def h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest(), 16)


def rows(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.open(encoding="utf-8") if line.strip()),
                  key=lambda r: h(r["id"]))


def write(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(OUT)}: {len(items)}")


heldout: list[dict] = []
for domain, (src, n_eval, train_name) in SOURCES.items():
    items = rows(SHARED / src)
    heldout += [{**r, "meta": {**r.get("meta", {}), "domain": domain}} for r in items[:n_eval]]
    if train_name:
        write(OUT / "train" / train_name, items[n_eval:])
write(OUT / "train" / "qmsum-train.jsonl", rows(SHARED / "qmsum" / "qmsum-train.jsonl"))  # all of QMSum's train split
write(OUT / "eval" / "heldout.jsonl", heldout)

(OUT / "demo").mkdir(exist_ok=True)
shutil.copy(SHARED / "demo" / "seed-home-tour.vtt", OUT / "demo" / "seed-home-tour.vtt")
for lic in ["qmsum/LICENSE", "video/LICENSE-lectures", "video/LICENSE-tinyrec", "video/LICENSE-vidchapters-subset",
            "video/LICENSE-rawkode"]:
    dst = OUT / "licenses" / (Path(lic).parent.name + "-" + Path(lic).name)
    dst.parent.mkdir(exist_ok=True)
    shutil.copy(SHARED / lic, dst)
