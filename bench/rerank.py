"""Research bench (issue 16, lever b): a fine-tuned MiniLM cross-encoder re-ranks the boundary trees'
best candidate lines.

The trees (boundary.py) see MiniLM similarities of frozen embeddings; a cross-encoder reads the words on
both sides of a candidate gap together and is trained for the decision itself. Scoring every gap of an
hour-long talk with it would cost minutes, so it only re-scores the trees' top candidates (NMS, about
three per expected chapter). Training candidates come from out-of-fold tree scores (two folds), so the
cross-encoder learns to fix the trees' mistakes on transcripts they did not see; a logistic stacker and
the decoder are fitted on a validation split that neither saw.

Usage: python bench/rerank.py [--epochs 2] [--max-train-pairs 6000]
Same training data and held-out set as bench/boundary.py (embeddings cached in state/cache). Prints the
held-out table of trees alone vs trees + cross-encoder, and the gate against the embedding baseline.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import random
import time

from corpus import CACHE, EMBEDDING, ROOT, heldout_and_train

from chaptering import boundary
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.decode import DecoderSettings, calibrate, decode
from chaptering.embeddings import clean_line, encoder_dir
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate, write_report
from chaptering.gate import gate
from chaptering.schema import Transcript

OUT = ROOT / "bench" / "results" / "rerank"


def _bucket(salt: str, tid: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}:{tid}".encode()).digest()[:4], "big") / 2**32


def candidates(scores: list[float], k: int, min_gap: int = 2) -> list[int]:
    """The k best lines by tree score, no two within `min_gap` lines (line 0 excluded)."""
    out: list[int] = []
    for i in sorted(range(1, len(scores)), key=lambda i: -scores[i]):
        if len(out) >= k:
            break
        if all(abs(i - j) >= min_gap for j in out):
            out.append(i)
    return out


def near_start(t: Transcript, i: int) -> int:
    """1 when a reference chapter starts within the primary tolerance of line i (5 s, or 1 turn)."""
    refs = set(t.boundaries) - {0}
    if t.has_times:
        ti = float(t.segments[i].start or 0.0)
        return int(any(abs(float(t.segments[r].start or 0.0) - ti) <= 5.0 for r in refs))
    return int(any(abs(r - i) <= 1 for r in refs))


def pair_text(t: Transcript, i: int, words: int = 64, lines: int = 12) -> tuple[str, str]:
    left = " ".join(clean_line(s.text) for s in t.segments[max(0, i - lines):i]).split()[-words:]
    right = " ".join(clean_line(s.text) for s in t.segments[i:i + lines]).split()[:words]
    return " ".join(left), " ".join(right)


def n_candidates(scores: list[float], t: Transcript, dec: DecoderSettings) -> int:
    return max(6, 3 * len(decode(scores, t, dec)))


class CrossEncoder:
    """MiniLM with a one-logit head over (text before the gap, text after it)."""

    def __init__(self, max_length: int = 192) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        folder = encoder_dir()
        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1,
                                                                        local_files_only=True)
        self.max_length = max_length

    def _batch(self, pairs: list[tuple[str, str]]):
        return self.tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True,
                        max_length=self.max_length, padding=True, return_tensors="pt")

    def fit(self, pairs: list[tuple[str, str]], labels: list[int], epochs: int, batch_size: int = 16,
            lr: float = 4e-5) -> None:
        import torch

        pos = max(1, sum(labels))
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(labels) - pos) / pos))
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * math.ceil(len(pairs) / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps + 1))
                                                  * max(0.0, 1 - s / steps))
        rng = random.Random(0)
        idx = list(range(len(pairs)))
        self.model.train()
        t0, step = time.time(), 0
        for ep in range(epochs):
            rng.shuffle(idx)
            run = 0.0
            for b in range(0, len(idx), batch_size):
                chunk = idx[b:b + batch_size]
                enc = self._batch([pairs[j] for j in chunk])
                logits = self.model(**enc).logits.squeeze(-1)
                loss = loss_fn(logits, torch.tensor([float(labels[j]) for j in chunk]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                run = 0.9 * run + 0.1 * float(loss) if step > 1 else float(loss)
                if step % 50 == 0:
                    el = time.time() - t0
                    print(f"  epoch {ep} step {step}/{steps} loss {run:.3f}  {el:.0f} s "
                          f"(eta {el / step * (steps - step):.0f} s)", flush=True)
        self.model.eval()

    def logits(self, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
        import torch

        out: list[float] = []
        with torch.inference_mode():
            for b in range(0, len(pairs), batch_size):
                out += [float(v) for v in self.model(**self._batch(pairs[b:b + batch_size])).logits.squeeze(-1)]
        return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class Reranked:
    """Tree scores, with the candidates re-scored by the stacker over (tree logit, cross-encoder logit); a
    boundary model to BoundaryChapterer (`starts`), which builds the predictions as for the trees."""

    def __init__(self, trees: boundary.BoundaryModel, ce: CrossEncoder, stacker, dec: DecoderSettings) -> None:
        self.trees, self.ce, self.stacker, self.decoder = trees, ce, stacker, dec

    def rescore(self, base: list[float], t: Transcript, count: DecoderSettings) -> list[float]:
        """`base` with its candidates (about three per chapter `count` decodes) re-scored, the rest 0."""
        if len(base) < 2:
            return base
        cand = candidates(base, n_candidates(base, t, count))
        ce = self.ce.logits([pair_text(t, i) for i in cand])
        p = self.stacker.predict_proba([[_logit(base[i]), c] for i, c in zip(cand, ce)])[:, 1]
        out = [0.0] * len(base)
        out[0] = 1.0
        for i, v in zip(cand, p):
            out[i] = float(v)
        return out

    def starts(self, t: Transcript, cache_dir=None) -> tuple[list[int], list[float]]:
        scores = self.rescore(self.trees.scores(t, CACHE), t, self.trees.decoder)
        return decode(scores, t, self.decoder), scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-train-pairs", type=int, default=6000)
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    held, train = heldout_and_train()
    train = [t for t in train if t.chapters and len(t.segments) >= 2]
    stack_val = [t for t in train if _bucket("rerank-val", t.id) < 0.2]
    ce_train = [t for t in train if _bucket("rerank-val", t.id) >= 0.2]
    print(f"{len(train)} train transcripts: {len(ce_train)} for the cross-encoder, {len(stack_val)} to stack",
          flush=True)

    t0 = time.time()
    folds = [[t for t in train if _bucket("rerank-fold", t.id) < 0.5],
             [t for t in train if _bucket("rerank-fold", t.id) >= 0.5]]
    oof: dict[str, tuple[list[float], DecoderSettings]] = {}
    for k in (0, 1):
        m = boundary.fit(folds[1 - k], cache_dir=CACHE, progress=False)
        for t in folds[k]:
            oof[t.id] = (m.scores(t, CACHE), m.decoder)
    full = boundary.fit(train, cache_dir=CACHE, progress=False)
    print(f"trees: two folds + full fit in {time.time() - t0:.0f} s; full decoder {full.decoder}", flush=True)

    def cand_rows(ts: list[Transcript]) -> list[tuple[Transcript, int, float, int]]:
        rows = []
        for t in ts:
            sc, dec = oof[t.id]
            rows += [(t, i, sc[i], near_start(t, i)) for i in candidates(sc, n_candidates(sc, t, dec))]
        return rows

    tr_rows = cand_rows(ce_train)
    random.Random(0).shuffle(tr_rows)
    tr_rows = tr_rows[:args.max_train_pairs]
    print(f"cross-encoder training pairs {len(tr_rows)}, positive {sum(r[3] for r in tr_rows)}", flush=True)
    ce = CrossEncoder()
    t0 = time.time()
    ce.fit([pair_text(t, i) for t, i, _, _ in tr_rows], [y for *_, y in tr_rows], epochs=args.epochs)
    print(f"cross-encoder trained in {time.time() - t0:.0f} s", flush=True)

    va_rows = cand_rows(stack_val)
    va_ce = ce.logits([pair_text(t, i) for t, i, _, _ in va_rows])
    xs = [[_logit(s), c] for (_, _, s, _), c in zip(va_rows, va_ce)]
    ys = [y for *_, y in va_rows]
    from sklearn.metrics import roc_auc_score

    print(f"val candidates {len(ys)}: AUC trees {roc_auc_score(ys, [x[0] for x in xs]):.3f}  "
          f"cross-encoder {roc_auc_score(ys, [x[1] for x in xs]):.3f}", flush=True)
    stacker = LogisticRegression().fit(xs, ys)
    print("stacker coef", stacker.coef_.tolist(), stacker.intercept_.tolist())
    print(f"val AUC stacked {roc_auc_score(ys, stacker.predict_proba(xs)[:, 1]):.3f}", flush=True)

    # Decoder for the re-ranked scores, calibrated on the stacking split.
    rr = Reranked(full, ce, stacker, DecoderSettings())
    scored_val = [(rr.rescore(oof[t.id][0], t, oof[t.id][1]), t) for t in stack_val]
    rr.decoder, vf1 = calibrate(scored_val, DecoderSettings())
    print(f"re-ranked decoder {rr.decoder} (val macro F1 {vf1:.3f})", flush=True)

    ref = Report.from_json(EMBEDDING.read_text()) if EMBEDDING.is_file() else None
    reports = {}
    for name, chapterer in (("trees", BoundaryChapterer(full, None, "trees-bench", CACHE)), ("rerank", BoundaryChapterer(rr, None, "rerank-bench", CACHE))):
        t0 = time.time()
        report, preds = evaluate(chapterer, held, data_name="heldout v2", progress=False)
        print(f"{name}: evaluated in {time.time() - t0:.0f} s, headline {report.metric('headline'):.3f}")
        write_report(report, preds, held, OUT / name)
        reports[name] = report
    for d in DOMAIN_ORDER:
        if reports["trees"].domain_metric(d, "f1") is None:
            continue
        line = f"  {d:9s}" + "".join(f"  {n} F1 {r.domain_metric(d, 'f1'):.3f} Pk {r.domain_metric(d, 'pk'):.3f}"
                                      for n, r in reports.items())
        if ref is not None:
            line += f"  | embedding F1 {ref.domain_metric(d, 'f1'):.3f}"
        print(line)
    if ref is not None:
        for name, r in reports.items():
            verdict = gate(r, None, [ref], GateSettings())
            print(f"gate {name} vs embedding:", "PROMOTE" if verdict.promote else "refuse")
            for why in verdict.reasons:
                if why.startswith("FAIL") or "headline" in why:
                    print("   ", why)
    verdict = gate(reports["rerank"], reports["trees"], [], GateSettings())
    print("gate rerank vs trees (as champion):", "PROMOTE" if verdict.promote else "refuse")
    for why in verdict.reasons:
        if why.startswith("FAIL") or "headline" in why:
            print("   ", why)


if __name__ == "__main__":
    main()
