"""A sequence model over the lines (issue 16, tried 2026-12-06, not kept): does a network that reads the
frozen MiniLM line vectors with context on both sides find boundary evidence the trees miss?

Each line's input is its MiniLM vector (optionally PCA-reduced), the trees' cue features (standardised,
NaN -> 0) and the out-of-fold lexical cue; a stack of dilated 1-D convolutions (kernel 3, dilations
1..16: +-31 lines of context) with residual connections gives P(start) per line. Trained like the trees:
binary log-loss, each source family weighing the same, early stopping on the same validation split
(boundary.is_validation), the decoder calibrated on it (decode.calibrate). Then the trees are fitted on
the same data and the two are mixed in logit space at the weight with the best validation log-loss (and
at 0.5, for reference); every variant is scored on held-out v2 with the gate against embedding valleys.

Usage: python bench/seqnet.py [h=32 drop=0.4 lr=0.0005 wd=0.05 pca=0 seed=0 ...]   (~3 min warm on
2 cores once bench/boundary.py has filled state/cache)
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch
from corpus import CACHE, EMBEDDING, heldout_and_train
from torch import nn

from chaptering import boundary, decode
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.cues import family_weights, start_labels, transcript_features
from chaptering.decode import DecoderSettings, calibrate, source_family
from chaptering.embeddings import line_embeddings
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate
from chaptering.gate import gate
from chaptering.lexical import fit as fit_lexical
from chaptering.lexical import out_of_fold

CFG = {"pca": 0, "h": 128, "dil": [1, 2, 4, 8, 16], "drop": 0.1, "epochs": 40, "crop": 192, "bs": 16,
       "lr": 1e-3, "wd": 1e-2, "seed": 0, "patience": 6}
for arg in sys.argv[1:]:
    key, value = arg.split("=")
    CFG[key] = json.loads(value)


class Net(nn.Module):
    """Dilated residual convolutions over the line sequence: every line sees +-31 lines."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        h = CFG["h"]
        self.inp = nn.Sequential(nn.Dropout(CFG["drop"]), nn.Linear(d_in, h), nn.GELU())
        self.convs = nn.ModuleList([nn.Conv1d(h, h, 3, padding=k, dilation=k) for k in CFG["dil"]])
        self.norms = nn.ModuleList([nn.LayerNorm(h) for _ in CFG["dil"]])
        self.drop = nn.Dropout(CFG["drop"])
        self.out = nn.Linear(h, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.drop(nn.functional.gelu(conv(norm(h).transpose(1, 2)).transpose(1, 2)))
        return self.out(h).squeeze(-1)


def mix(a: list[float], b: list[float], w: float) -> list[float]:
    """w * logit(a) + (1 - w) * logit(b), back to probabilities; line 0 stays 1."""
    pa, pb = np.clip(np.array(a), 1e-6, 1 - 1e-6), np.clip(np.array(b), 1e-6, 1 - 1e-6)
    out = 1 / (1 + np.exp(-(w * np.log(pa / (1 - pa)) + (1 - w) * np.log(pb / (1 - pb)))))
    out[0] = 1.0
    return [float(v) for v in out]


class Scorer:
    """What BoundaryChapterer needs from a boundary model: scores and decoded starts."""

    def __init__(self, score_fn, decoder: DecoderSettings) -> None:
        self.score_fn, self.decoder = score_fn, decoder

    def starts(self, t, cache_dir=None):
        s = self.score_fn(t)
        return decode.decode(s, t, self.decoder), s


def report_on_heldout(name: str, scorer: Scorer, held, ref: Report) -> None:
    report, _ = evaluate(BoundaryChapterer(scorer, None, name, CACHE), held, data_name="heldout v2", progress=False)
    print(f"{name}: decoder {scorer.decoder.describe()}; held-out headline {report.metric('headline'):.3f}")
    for d in DOMAIN_ORDER:
        print(f"  {d:9s} F1 {report.domain_metric(d, 'f1'):.3f}  Pk {report.domain_metric(d, 'pk'):.3f}  "
              f"B {report.domain_metric(d, 'boundary_similarity'):.3f}  |dn| {report.domain_metric(d, 'abs_count_error'):.1f}")
    for reason in gate(report, None, [ref], GateSettings()).reasons:
        if reason.startswith("FAIL") or "headline" in reason:
            print("   ", reason)


def main() -> None:
    print(CFG, flush=True)
    torch.manual_seed(CFG["seed"])
    rng = np.random.default_rng(CFG["seed"])
    torch.set_num_threads(2)
    held, train = heldout_and_train()
    labelled = [t for t in train if t.chapters and len(t.segments) >= 2]
    tr = [t for t in labelled if not boundary.is_validation(t.id, 0.2)]
    va = [t for t in labelled if boundary.is_validation(t.id, 0.2)]
    t0 = time.time()
    oof, lex_full = out_of_fold(labelled), fit_lexical(labelled)

    def raw(t, lex) -> np.ndarray:
        return np.concatenate([line_embeddings(t, CACHE).astype(np.float32),
                               np.nan_to_num(transcript_features(t, CACHE), nan=0.0), lex[:, None]], axis=1)

    data = {t.id: raw(t, np.asarray(oof[t.id], dtype=np.float32)) for t in labelled}
    proj = None
    if CFG["pca"]:
        emb = np.vstack([data[t.id][:, :384] for t in tr])
        emb = emb[rng.choice(len(emb), min(30000, len(emb)), replace=False)]
        mean = emb.mean(0)
        _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
        proj = (mean, vt[:CFG["pca"]].T / (s[:CFG["pca"]] / math.sqrt(len(emb)))[None, :])

    def reduce(x: np.ndarray) -> np.ndarray:
        return x if proj is None else np.concatenate([(x[:, :384] - proj[0]) @ proj[1], x[:, 384:]], axis=1)

    data = {k: reduce(v) for k, v in data.items()}
    stacked = np.vstack([data[t.id] for t in tr])
    d_emb = CFG["pca"] or 384
    mu, sd = stacked.mean(0), stacked.std(0) + 1e-6
    mu[:d_emb], sd[:d_emb] = 0.0, (1.0 if proj is not None else 1.0 / 8)  # unit vectors: scale x8

    def norm(x: np.ndarray) -> np.ndarray:
        return np.clip((x - mu) / sd, -6, 6).astype(np.float32)

    data = {k: norm(v) for k, v in data.items()}
    labels = {t.id: np.array(start_labels(t), dtype=np.float32) for t in labelled}
    weights = {}
    for split in (tr, va):
        w = family_weights(np.concatenate([np.full(len(t.segments), source_family(t), dtype=object) for t in split]))
        offsets = np.cumsum([0] + [len(t.segments) for t in split])
        for t, a, b in zip(split, offsets[:-1], offsets[1:]):
            weights[t.id] = w[a:b].astype(np.float32)
            weights[t.id][0] = 0.0  # line 0 always starts a chapter: never a decision
    print(f"inputs ready in {time.time() - t0:.0f} s, {stacked.shape[1]} per line", flush=True)

    net = Net(stacked.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=CFG["lr"], weight_decay=CFG["wd"])

    def predict(x: np.ndarray) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            p = torch.sigmoid(net(torch.from_numpy(x)[None])[0]).numpy()
        net.train()
        return p

    def logloss(get) -> float:
        """Family-weighted validation log-loss (sklearn's, probabilities clipped as before)."""
        from sklearn.metrics import log_loss

        p = np.clip(np.concatenate([np.asarray(get(t), dtype=float) for t in va]), 1e-6, 1 - 1e-6)
        return float(log_loss(np.concatenate([labels[t.id] for t in va]), p, labels=[0, 1],
                              sample_weight=np.concatenate([weights[t.id] for t in va])))

    best, best_state, bad = math.inf, None, 0
    for epoch in range(CFG["epochs"]):
        crops = []
        for t in tr:
            n = len(t.segments)
            for _ in range(max(1, math.ceil(n / CFG["crop"]))):
                a = int(rng.integers(0, max(1, n - CFG["crop"]) + 1))
                crops.append((t.id, a, min(n, a + CFG["crop"])))
        rng.shuffle(crops)
        for s in range(0, len(crops), CFG["bs"]):
            part = crops[s:s + CFG["bs"]]
            size = max(b - a for _, a, b in part)
            x = np.zeros((len(part), size, stacked.shape[1]), np.float32)
            y, w = np.zeros((len(part), size), np.float32), np.zeros((len(part), size), np.float32)
            for j, (i, a, b) in enumerate(part):
                x[j, :b - a], y[j, :b - a], w[j, :b - a] = data[i][a:b], labels[i][a:b], weights[i][a:b]
            wt = torch.from_numpy(w)
            loss = (nn.functional.binary_cross_entropy_with_logits(net(torch.from_numpy(x)), torch.from_numpy(y),
                                                                   reduction="none") * wt).sum() / wt.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = logloss(lambda t: predict(data[t.id]))
        print(f"epoch {epoch}: validation log-loss {val:.4f}", flush=True)
        if val < best - 1e-4:
            best, bad, best_state = val, 0, {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= CFG["patience"]:
                break
    net.load_state_dict(best_state)
    print(f"sequence model: best validation log-loss {best:.4f}, {time.time() - t0:.0f} s", flush=True)

    def seq_scores(t) -> list[float]:
        p = [float(v) for v in predict(norm(reduce(raw(t, np.asarray(lex_full.scores(t), dtype=np.float32)))))]
        p[0] = 1.0
        return p

    seq_val = {t.id: [1.0] + [float(v) for v in predict(data[t.id])[1:]] for t in va}
    captured = {}

    def capture(scored, settings, max_count_ratio=2.0):
        captured["val"] = {t.id: sc for sc, t in scored}
        return calibrate(scored, settings, max_count_ratio)

    boundary.calibrate = capture  # the trees' validation scores, exactly as their own calibration saw them
    trees = boundary.fit(train, cache_dir=CACHE, params={"seed": CFG["seed"]}, progress=False)
    tree_val = captured["val"]
    print(f"trees: validation log-loss {logloss(lambda t: tree_val[t.id]):.4f}")
    losses = {w: logloss(lambda t, w=w: mix(tree_val[t.id], seq_val[t.id], w))
              for w in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)}
    print("validation log-loss by the trees' weight", {k: round(v, 4) for k, v in losses.items()}, flush=True)
    ref = Report.from_json(EMBEDDING.read_text())
    seq_dec, f1 = calibrate([(seq_val[t.id], t) for t in va], DecoderSettings())
    print(f"sequence model alone: validation F1 {f1:.4f}")
    report_on_heldout("sequence model", Scorer(seq_scores, seq_dec), held, ref)
    for w in sorted({min(losses, key=losses.get), 0.5}):
        dec, f1 = calibrate([(mix(tree_val[t.id], seq_val[t.id], w), t) for t in va], DecoderSettings())
        print(f"mix, trees' weight {w}: validation F1 {f1:.4f}")
        report_on_heldout(f"mix {w}", Scorer(lambda t, w=w: mix(trees.scores(t, CACHE), seq_scores(t), w), dec),
                          held, ref)


if __name__ == "__main__":
    main()
