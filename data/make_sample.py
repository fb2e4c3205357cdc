"""Rebuild data/ from ../shared/data (run from the repo root): `python data/make_sample.py`.

Deterministic: splits are by sha256 of the transcript id, so the held-out set never drifts.
"""

import hashlib
import json
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent


def h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest(), 16)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def write(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(OUT)}: {len(items)}")


video = rows(SHARED / "video" / "vidchapters-short.jsonl")
write(OUT / "train" / "vidchapters-short.jsonl", [r for r in video if h(r["id"]) % 5])
eval_video = [r for r in video if h(r["id"]) % 5 == 0]
qmsum_train = sorted(rows(SHARED / "qmsum" / "qmsum-train.jsonl"), key=lambda r: h(r["id"]))
write(OUT / "train" / "qmsum-train.jsonl", qmsum_train[:40])
write(OUT / "train" / "lectures.jsonl", rows(SHARED / "video" / "lectures.jsonl"))
write(OUT / "train" / "tinyrec-dev.jsonl", rows(SHARED / "video" / "tinyrec-dev.jsonl"))
qmsum_val = sorted(rows(SHARED / "qmsum" / "qmsum-val.jsonl"), key=lambda r: h(r["id"]))
write(OUT / "eval" / "heldout.jsonl", eval_video + qmsum_val[:6])
(OUT / "demo").mkdir(exist_ok=True)
shutil.copy(SHARED / "demo" / "seed-home-tour.vtt", OUT / "demo" / "seed-home-tour.vtt")
for lic in ["qmsum/LICENSE", "video/LICENSE-lectures", "video/LICENSE-tinyrec", "video/LICENSE-vidchapters-subset"]:
    dst = OUT / "licenses" / (Path(lic).parent.name + "-" + Path(lic).name)
    dst.parent.mkdir(exist_ok=True)
    shutil.copy(SHARED / lic, dst)
