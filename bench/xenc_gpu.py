"""Device side of bench/xenc.py (issue 16, lever b over every line): fine-tune MiniLM as a cross-encoder
over (words before line i, words from line i on) on a lent GPU, and write each line's logits.

Runs on the device machine's own Python (torch, transformers, numpy, sklearn; nothing from this repo, so
no wheels travel): reads what `python bench/xenc.py prep` packed into .gpu-xenc/ (the corpus as plain
lines, MiniLM as int8 rows), trains one model per out-of-fold split of the labelled transcripts and one on
all of them (which scores held-out v2), and writes $OUT/xenc-<config>.npz after each config, so a run cut
short still returns what it finished. Two logits per line: "a chapter starts here" and "one starts
within the primary tolerance" (5 s, or 2 turns untimed); bench/xenc.py feeds both to the trees.

Usage (device): python3 bench/xenc_gpu.py [--configs narrow wide] [--budget-s 480]
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

PACK = Path(".gpu-xenc")
CONFIGS = {  # words each side of the gap, token budget, epochs, share of far-from-start lines per epoch
    "narrow": {"words": 64, "max_length": 192, "epochs": 3, "neg_share": 0.5},
    "wide": {"words": 160, "max_length": 448, "epochs": 3, "neg_share": 0.5},
}


def load_encoder(num_labels: int = 2):
    """MiniLM rebuilt from the int8 rows prep wrote (fine-tuning starts within half a step of fp32)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(PACK / "minilm", num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config)
    packed = np.load(PACK / "minilm" / "weights.npz")
    state = {}
    for key in packed.files:
        if key.endswith((".__scale", "position_ids")):
            continue
        w = packed[key]
        if f"{key}.__scale" in packed.files:
            w = w.astype(np.float32) * packed[f"{key}.__scale"][:, None]
        state[f"bert.{key}"] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("classifier") or "pooler" in k or "position_ids" in k for k in missing), missing
    return model


def pair_texts(lines: list[str], words: int) -> tuple[list[str], list[str]]:
    """(last `words` words before line i, first `words` words from line i on) for every line."""
    toks = [ln.split() for ln in lines]
    flat, starts = [], []
    for t in toks:
        starts.append(len(flat))
        flat.extend(t)
    left = [" ".join(flat[max(0, s - words):s]) for s in starts]
    right = [" ".join(flat[s:s + words]) for s in starts]
    return left, right


def tokenize(tok, corpus, words: int, max_length: int):
    """Input ids per transcript line, truncated from the far ends (the gap stays in the middle)."""
    tok.truncation_side = "right"
    ids = {}
    for t in corpus:
        left, right = pair_texts(t["lines"], words)
        lt = tok(left, add_special_tokens=False)["input_ids"]
        rt = tok(right, add_special_tokens=False)["input_ids"]
        half = (max_length - 3) // 2
        rows = []
        for a, b in zip(lt, rt):
            a, b = a[-half:], b[:max_length - 3 - min(len(a), half)]
            rows.append(([tok.cls_token_id] + a + [tok.sep_token_id] + b + [tok.sep_token_id], len(a) + 2))
        ids[t["id"]] = rows
    return ids


def batches(rows, size: int, device: str):
    for k in range(0, len(rows), size):
        chunk = rows[k:k + size]
        n = max(len(r[0]) for r in chunk)
        x = torch.zeros(len(chunk), n, dtype=torch.long)
        tt = torch.zeros(len(chunk), n, dtype=torch.long)
        m = torch.zeros(len(chunk), n, dtype=torch.long)
        for j, (r, sep) in enumerate((c[0], c[1]) for c in chunk):
            x[j, :len(r)] = torch.tensor(r)
            m[j, :len(r)] = 1
            tt[j, sep:len(r)] = 1
        yield chunk, x.to(device), tt.to(device), m.to(device)


def examples(corpus, ids):
    """(token row, where segment B starts, exact, near, family, transcript id, line) per line after line 0."""
    out = []
    for t in corpus:
        rows = ids[t["id"]]
        exact, near = set(t["starts"]), set(t["near"])
        for i in range(1, len(rows)):
            out.append((rows[i][0], rows[i][1], float(i in exact), float(i in near), t["family"], t["id"], i))
    return out


def train(train_ex, cfg, device: str, seed: int, log) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_encoder().to(device)
    fams = [e[4] for e in train_ex]
    kinds = sorted(set(fams))
    count = {f: fams.count(f) for f in kinds}
    fam_w = {f: len(fams) / (len(kinds) * count[f]) for f in kinds}
    pos = [e for e in train_ex if e[3] > 0]
    neg = [e for e in train_ex if e[3] == 0]
    per_epoch = len(pos) + int(cfg["neg_share"] * len(neg))
    bs = 64
    steps = cfg["epochs"] * math.ceil(per_epoch / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    model.train()
    for epoch in range(cfg["epochs"]):
        sample = pos + rng.sample(neg, int(cfg["neg_share"] * len(neg)))
        rng.shuffle(sample)
        sample.sort(key=lambda e: len(e[0]) // 32)  # similar lengths together: less padding
        groups = [sample[k:k + bs] for k in range(0, len(sample), bs)]
        rng.shuffle(groups)
        losses = []
        for g in groups:
            _, x, tt, m = next(batches([(e[0], e[1]) for e in g], bs, device))
            y = torch.tensor([[e[2], e[3]] for e in g], device=device)
            w = torch.tensor([fam_w[e[4]] for e in g], device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=x, token_type_ids=tt, attention_mask=m).logits.float()
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1) * w).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        log(f"    epoch {epoch}: {len(groups)} steps, loss {np.mean(losses[:50]):.4f} -> {np.mean(losses[-50:]):.4f}")
    return model


@torch.no_grad()
def score(model, ex, device: str) -> np.ndarray:
    model.eval()
    order = sorted(range(len(ex)), key=lambda k: len(ex[k][0]))
    out = np.zeros((len(ex), 2), dtype=np.float32)
    for k in range(0, len(order), 512):
        idx = order[k:k + 512]
        _, x, tt, m = next(batches([(ex[j][0], ex[j][1]) for j in idx], 512, device))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, token_type_ids=tt, attention_mask=m).logits.float()
        out[idx] = logits.cpu().numpy()
    return out


def auc_by_family(ex, logits, log) -> None:
    from sklearn.metrics import roc_auc_score

    fams = sorted({e[4] for e in ex})
    parts = []
    for f in fams:
        k = [j for j, e in enumerate(ex) if e[4] == f]
        y = [ex[j][2] for j in k]
        if 0 < sum(y) < len(y):
            parts.append(f"{f} {roc_auc_score(y, logits[k, 0]):.3f}/{roc_auc_score([ex[j][3] for j in k], logits[k, 1]):.3f}")
    log("    AUC exact/near: " + ", ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["narrow", "wide"])
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--limit", type=int, default=0, help="transcripts per split (a smoke run on the CPU)")
    ap.add_argument("--epochs", type=int, default=0, help="override every config's epochs (smoke runs)")
    args = ap.parse_args()
    t0 = time.time()
    out_dir = Path(os.environ.get("OUT", "/tmp/xenc-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    def log(msg: str) -> None:
        line = f"[{time.time() - t0:6.1f}s] {msg}"
        print(line, flush=True)
        with open(out_dir / "xenc-log.txt", "a") as f:
            f.write(line + "\n")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    log(f"device {device} {torch.cuda.get_device_name() if device == 'cuda' else ''} torch {torch.__version__}")
    with lzma.open(PACK / "corpus.json.xz") as f:
        corpus = json.loads(f.read())
    if args.limit:
        corpus = [t for t in corpus if t["fold"] < 0][:args.limit] + [t for t in corpus if t["fold"] >= 0][:3 * args.limit]
    folds = sorted({t["fold"] for t in corpus if t["fold"] >= 0})
    log(f"{len(corpus)} transcripts, {sum(len(t['lines']) for t in corpus)} lines, folds {folds}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(PACK / "minilm")
    for name in args.configs:
        if time.time() - t0 > args.budget_s:
            log(f"budget spent: {name} not run")
            break
        cfg = {**CONFIGS[name], **({"epochs": args.epochs} if args.epochs else {})}
        log(f"config {name} {cfg}")
        try:
            run_config(name, cfg, corpus, folds, tok, device, out_dir, log)
        except Exception as e:  # noqa: BLE001 - the next config may still run; the log names what broke
            import traceback

            log(f"config {name} failed: {e!r}\n{traceback.format_exc()}")
    log("done")


def run_config(name, cfg, corpus, folds, tok, device, out_dir, log) -> None:
    ids = tokenize(tok, corpus, cfg["words"], cfg["max_length"])
    ex_all = {t["id"]: examples([t], ids) for t in corpus}
    log("  tokenized")
    result: dict[str, np.ndarray] = {}
    for k in folds + [-1]:
        train_ex = [e for t in corpus if t["fold"] >= 0 and t["fold"] != k for e in ex_all[t["id"]]]
        target = [t for t in corpus if t["fold"] == k] if k >= 0 else [t for t in corpus if t["fold"] < 0]
        log(f"  fold {k}: train {len(train_ex)} lines, score {len(target)} transcripts")
        model = train(train_ex, cfg, device, seed=k + 1, log=log)
        ex = [e for t in target for e in ex_all[t["id"]]]
        logits = score(model, ex, device)
        auc_by_family(ex, logits, log)
        for t in target:
            n = len(t["lines"])
            arr = np.zeros((n, 2), dtype=np.float32)
            arr[0] = 10.0
            result[t["id"]] = arr
        for e, v in zip(ex, logits):
            result[e[5]][e[6]] = v
        del model
        torch.cuda.empty_cache() if device == "cuda" else None
    np.savez_compressed(out_dir / f"xenc-{name}.npz", **result)
    log(f"  wrote xenc-{name}.npz ({len(result)} transcripts)")


if __name__ == "__main__":
    main()
