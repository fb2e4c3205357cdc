"""Is there boundary evidence in the model's hidden states, and where? `python bench/probe.py [--adapter DIR]`

A linear probe (logistic regression) is fitted on the training videos (less any the eval guard rejects) and
scored on the held-out videos: per-transcript ROC AUC of "does a chapter start at line k" (as
`metrics.start_auc`), and boundary F1@5 / Pk when its scores pick the starts the way ranked decoding does
(`baselines.top_starts`; count from the length rule, from a line-count fit on the training videos, from the
probe itself (1 + the sum of its unweighted, so roughly calibrated, probabilities), and the reference count
as an oracle), for hidden states taken at two places of the same teacher-forced window:
- `answer`: the last digit of `k` in the answer (`k =`), where the tagged format makes its decision.
  The model must look back to line k's text from there.
- `inline`: the `]` closing `[k]` in the transcript itself, right after the model has read line k.
`inline+diff` adds the change from line k-1's state. A `position` probe (line index features only) is the
yardstick: the evidence a model can get without reading anything. Greedy, no sampling: deterministic.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
from pathlib import Path
from typing import Any

from chaptering import prompt
from chaptering.baselines import expected_chapters, top_starts
from chaptering.config import get_settings
from chaptering.curate import ContaminationGuard
from chaptering.io import read_transcripts
from chaptering.metrics import line_f1_and_pk, score
from chaptering.models import load_model, resolve_base
from chaptering.schema import Prediction, Transcript


def positions(tok: Any, t: Transcript) -> tuple[list[int], list[int], list[int]]:
    """(token ids, answer positions, inline positions) for lines 0..n-1 of the whole transcript as one window."""
    n = len(t.segments)
    lines = prompt.window_lines(t, 0, n)
    text = tok.apply_chat_template(prompt.messages(lines), tokenize=False, add_generation_prompt=True)
    answer_at = len(text)
    text += prompt.render_answer([(0, "Introduction")], n)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [a for a, _ in enc["offset_mapping"]]

    def token_at(c: int) -> int:
        return bisect.bisect_right(starts, c) - 1

    inline, cursor = [], text.index(prompt.INSTRUCTION) + len(prompt.INSTRUCTION)
    for line in lines:
        cursor = text.index(line, cursor) + len(line)
        inline.append(token_at(cursor - 1))  # the closing `]`
    answer, cursor = [], answer_at
    for k in range(n):
        answer.append(token_at(cursor + len(str(k)) - 1))
        cursor = text.index("\n", cursor) + 1 if k < n - 1 else cursor
    return enc["input_ids"], answer, inline


def features(model: Any, tok: Any, transcripts: list[Transcript], max_tokens: int) -> list[dict[str, Any]]:
    import torch

    out = []
    n_layers = model.config.num_hidden_layers
    for t in transcripts:
        ids, answer, inline = positions(tok, t)
        if len(ids) > max_tokens:
            continue
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        ref = {c.start_segment for c in t.chapters or []}
        n = len(t.segments)
        row: dict[str, Any] = {"id": t.id, "t": t, "y": [int(k in ref) for k in range(1, n)],
                               "position": [[k / n, min(k, n - k) / n, min(k, n - k), n] for k in range(1, n)]}
        for layer in (n_layers // 2, n_layers):
            h = hs[layer][0].float()
            a, i = h[answer].numpy(), h[inline].numpy()
            row[f"answer@L{layer}"] = a[1:]
            row[f"inline@L{layer}"] = i[1:]
            row[f"inline+diff@L{layer}"] = [list(i[k]) + list(i[k] - i[k - 1]) for k in range(1, n)]
        out.append(row)
    return out


def probe(train: list[dict[str, Any]], test: list[dict[str, Any]], key: str, c: float) -> dict[str, float]:
    """Mean per-transcript AUC on `test` of a probe fitted on `train` (transcripts with both classes), and
    mean F1@5 / Pk of the starts its scores pick, with the length rule's count, a count fitted on `train`
    (chapters ~ a + b * lines, least squares) and the reference count."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([np.asarray(r[key], dtype=np.float32) for r in train])
    y = np.concatenate([r["y"] for r in train])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
    clf.fit(x, y)
    calibrated = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)
    b, a = np.polyfit([len(r["y"]) + 1 for r in train], [sum(r["y"]) + 1 for r in train], 1)
    aucs, rule, fitted, expected, oracle = [], [], [], [], []
    for r in test:
        xr = np.asarray(r[key], dtype=np.float32)
        s = clf.predict_proba(xr)[:, 1]
        if 0 < sum(r["y"]) < len(r["y"]):
            aucs.append(roc_auc_score(r["y"], s))
        n, keys = len(r["t"].segments), [-v for v in s]
        rule.append(line_f1_and_pk(top_starts(n, keys, expected_chapters(r["t"]) - 1), r["t"]))
        fitted.append(line_f1_and_pk(top_starts(n, keys, max(1, round(a + b * n)) - 1), r["t"]))
        oracle.append(line_f1_and_pk(top_starts(n, keys, len(r["t"].chapters or []) - 1), r["t"]))
        p = calibrated.predict_proba(xr)[:, 1]
        expected.append(line_f1_and_pk(top_starts(n, [-v for v in p], round(float(p.sum()))), r["t"]))
    mean = statistics.mean
    return {"auc": mean(aucs), "n": len(aucs), "f1_k5": mean(f for f, _ in rule), "pk": mean(p for _, p in rule),
            "fitted_f1_k5": mean(f for f, _ in fitted), "fitted_pk": mean(p for _, p in fitted),
            "expected_f1_k5": mean(f for f, _ in expected), "expected_pk": mean(p for _, p in expected),
            "oracle_f1_k5": mean(f for f, _ in oracle), "oracle_pk": mean(p for _, p in oracle)}


def stored(path: Path, test: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean F1@5 / Pk of a stored predictions.jsonl over the same held-out transcripts as the probe."""
    by_id = {r["id"]: r["t"] for r in test}
    preds = [Prediction.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
    scores = [score(by_id[p.id], p) for p in preds if p.id in by_id]
    return statistics.mean(s["f1_k5"] for s in scores), statistics.mean(s["pk"] for s in scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=Path, default=Path("data/train/vidchapters-short.jsonl"))
    ap.add_argument("--adapter", type=Path, default=None, help="a trained adapter folder (default: the base)")
    ap.add_argument("--max-tokens", type=int, default=2048, help="skip longer transcripts (meetings)")
    ap.add_argument("--c", type=float, default=0.01, help="inverse L2 strength, fixed in advance")
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="a stored predictions.jsonl to score on the same transcripts")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe.jsonl")
    args = ap.parse_args()
    settings = get_settings().prepare()
    base = resolve_base(settings.model.base, settings.state_dir / "cache")
    model, tok = load_model(base, adapter=args.adapter)
    heldout = read_transcripts(settings.data.eval_path)
    guard = ContaminationGuard(heldout)
    candidates = read_transcripts(args.train)
    clean = [t for t in candidates if guard.check(t) is None]
    train = features(model, tok, clean, args.max_tokens)
    test = features(model, tok, heldout, args.max_tokens)
    print(f"{len(train)} train ({len(candidates) - len(clean)} held out by the eval guard) / {len(test)} held-out "
          f"transcripts, model {args.adapter or base}")
    for path in args.compare:
        f1, p = stored(path, test)
        print(f"{path!s:60s} F1@5 {f1:.3f} Pk {p:.3f}")
    rows = []
    for key in [k for k in train[0] if k not in ("id", "t", "y")]:
        m = probe(train, test, key, args.c)
        rows.append({"model": str(args.adapter or "base"), "features": key, "c": args.c,
                     **{k: round(v, 3) for k, v in m.items()}})
        print(f"{key:20s} AUC {m['auc']:.3f} | F1@5 / Pk with the length rule's count {m['f1_k5']:.3f} / "
              f"{m['pk']:.3f}, a fitted count {m['fitted_f1_k5']:.3f} / {m['fitted_pk']:.3f}, the probe's expected "
              f"count {m['expected_f1_k5']:.3f} / {m['expected_pk']:.3f}, the reference "
              f"count {m['oracle_f1_k5']:.3f} / {m['oracle_pk']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
