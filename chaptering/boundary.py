"""The boundary model: P(a chapter starts at this line) from cues.py's features, by gradient-boosted trees.

Trained with a classification loss on the labelled starts of the training corpus; each source family
(qmsum, rawkode-academy, ..., and users' corrections as `feedback`) weighs the same in total whatever its size (one QMSum meeting has as many lines as 200 short videos), so the
trees learn short videos, talks and meetings alike. The threshold that turns scores into chapters is
fitted on a validation split the trees never saw (decode.calibrate).

Saved as LightGBM's text model plus a JSON card (features, decoder settings, metrics): no pickle, so
a registered model can be loaded from anywhere without running code from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaptering.cues import FEATURES, family_weights, start_labels, transcript_features
from chaptering.decode import DecoderSettings, calibrate, decode, source_family
from chaptering.lexical import LEXICAL_FILE, LexicalCue, out_of_fold
from chaptering.lexical import fit as fit_lexical
from chaptering.schema import Transcript
from chaptering.tree_average import average

MODEL_FILE = "boundary.lgb.txt"
CARD_FILE = "boundary.json"
LEXICAL_FEATURE = "lex"  # the learned lexical cue's logit (lexical.py), after cues.FEATURES

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "num_threads": 2,
    "seed": 0,
}


def is_validation(transcript_id: str, share: float) -> bool:
    """Stable split by id hash: the same transcript is on the same side every night. Salted: the held-out
    set is also chosen by hashed id, and unsalted the two would draw from the same end."""
    h = int.from_bytes(hashlib.sha256(f"boundary-val:{transcript_id}".encode()).digest()[:4], "big")
    return h / 2**32 < share


@dataclass
class BoundaryModel:
    """A fitted booster and the decoder settings calibrated for it."""

    booster: Any
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    card: dict[str, Any] = field(default_factory=dict)
    lexical: LexicalCue | None = None  # None: a model trained before the lexical cue (cues.FEATURES only)

    def features(self, transcript: Transcript, cache_dir: Path | None = None, encode: Any = None) -> Any:
        """The trees' input: cues.py's features, then the lexical cue's logit when the model has one."""
        return with_lexical(transcript_features(transcript, cache_dir, encode), transcript, self.lexical)

    def scores(self, transcript: Transcript, cache_dir: Path | None = None) -> list[float]:
        """P(start) per line; line 0 is 1.0 (a chapter always starts there)."""
        if len(transcript.segments) < 2:
            return [1.0] * len(transcript.segments)
        p = [float(v) for v in self.booster.predict(self.features(transcript, cache_dir))]
        p[0] = 1.0
        return p

    def starts(self, transcript: Transcript, cache_dir: Path | None = None) -> tuple[list[int], list[float]]:
        scores = self.scores(transcript, cache_dir)
        return decode(scores, transcript, self.decoder), scores

    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(out_dir / MODEL_FILE))
        if self.lexical is not None:
            self.lexical.save(out_dir)
        card = {**self.card, "features": feature_names(self.lexical is not None), "decoder": self.decoder.to_dict()}
        (out_dir / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
        return out_dir

    @classmethod
    def load(cls, folder: Path, booster: Any = None) -> BoundaryModel:
        """`booster`: something with LightGBM's `predict(x)` to score with instead of the saved text model
        (the edge runtime's ONNX trees, which need no lightgbm)."""
        folder = Path(folder)
        card = json.loads((folder / CARD_FILE).read_text())
        lexical = card.get("features") == feature_names(True)
        if card.get("features") != feature_names(lexical):
            raise ValueError(f"{folder}: boundary model was trained on other features than cues.FEATURES; retrain it")
        if lexical and not (folder / LEXICAL_FILE).is_file():
            raise ValueError(f"{folder}: boundary model uses the lexical cue but {LEXICAL_FILE} is missing")
        if booster is None:
            import lightgbm as lgb

            booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
        return cls(booster=booster, decoder=DecoderSettings(**card["decoder"]), card=card,
                   lexical=LexicalCue.load(folder) if lexical else None)


def is_boundary_model(folder: Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file() and (Path(folder) / CARD_FILE).is_file()


def feature_names(lexical: bool) -> list[str]:
    return FEATURES + [LEXICAL_FEATURE] if lexical else list(FEATURES)


def with_lexical(x: Any, transcript: Transcript, lexical: LexicalCue | None) -> Any:
    """`x` with the lexical cue's column appended (unchanged for a model without the cue)."""
    return x if lexical is None else _append(x, lexical.scores(transcript))


def _append(x: Any, column: Any) -> Any:
    import numpy as np

    return np.column_stack([x, column]).astype(np.float32)


def _features(transcripts: Sequence[Transcript], cache_dir: Path | None, progress: bool,
              lexical: dict[str, Any] | None) -> dict[str, Any]:
    """Each transcript's feature matrix by id, computed once for training and calibration; `lexical`
    holds the out-of-fold lexical scores when the model uses the cue."""
    from tqdm.auto import tqdm

    out = {}
    for t in tqdm(transcripts, desc="boundary features", unit="transcript", disable=not progress):
        x = transcript_features(t, cache_dir)
        out[t.id] = x if lexical is None else _append(x, lexical[t.id])
    return out


def window_transcripts(transcripts: Sequence[Transcript], long_lines: int, cache_dir: Path | None,
                       lexical: dict[str, Any] | None) -> list[tuple[Transcript, Any]]:
    """Windows of the long timed `transcripts` (crops.py) with their features, each featurised as a video of
    its own (its positions, totals and depths); the lines' embeddings and out-of-fold lexical scores are the
    whole transcript's, sliced."""
    from chaptering.crops import crop
    from chaptering.crops import windows as window_ranges
    from chaptering.cues import line_features
    from chaptering.embeddings import line_embeddings

    out = []
    for t in transcripts:
        ranges = window_ranges(t, long_lines)
        emb = line_embeddings(t, cache_dir) if ranges else None
        for a, b in ranges:
            window = crop(t, a, b)
            x = line_features(window, emb[a:b])
            out.append((window, x if lexical is None else _append(x, lexical[t.id][a:b])))
    return out


def _matrix(transcripts: Sequence[Transcript], features: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Stacked features, labels and per-line weights (each source sums to the same weight)."""
    import numpy as np

    xs, ys, srcs = [], [], []
    for t in transcripts:
        xs.append(features[t.id])
        ys.append(np.array(start_labels(t), dtype=np.float32))
        srcs.append(np.full(len(t.segments), source_family(t), dtype=object))
    return np.vstack(xs), np.concatenate(ys), family_weights(np.concatenate(srcs))


def fit(
    transcripts: Sequence[Transcript],
    cache_dir: Path | None = None,
    rounds: int = 300,
    val_share: float = 0.2,
    decoder: DecoderSettings | None = None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    lexical: bool = True,
    windows: bool = True,
    bag: int = 1,
) -> BoundaryModel:
    """Train on the non-validation transcripts, calibrate the threshold on the validation ones.

    The booster stops early on the validation loss (at most `rounds` trees); the log of both losses
    goes on the card, which is what the "its loss falls" test reads. With `lexical`, the lexical cue
    is fitted on every labelled transcript for new ones, and the trees (training and validation lines
    alike) see out-of-fold lexical scores, as they will see a new transcript's. With `windows`, windows of
    the long timed training transcripts (crops.py) train beside them as mid-length videos.
    """
    import lightgbm as lgb

    t0 = time.perf_counter()
    decoder = decoder or DecoderSettings()
    labelled = [t for t in transcripts if t.chapters and len(t.segments) >= 2]
    train = [t for t in labelled if not is_validation(t.id, val_share)]
    val = [t for t in labelled if is_validation(t.id, val_share)] or train
    oof = out_of_fold(labelled) if lexical else None
    lexical_cue = fit_lexical(labelled) if lexical else None
    lexical_seconds = time.perf_counter() - t0
    features = _features(labelled, cache_dir, progress, oof)
    mid = window_transcripts(train, decoder.long_lines, cache_dir, oof) if windows else []
    features.update({window.id: x for window, x in mid})
    x, y, w = _matrix(train + [window for window, _ in mid], features)
    xv, yv, wv = _matrix(val, features)
    names = feature_names(lexical)
    params = {**DEFAULT_PARAMS, **(params or {})}
    boosters, logs = [], []
    for i in range(max(1, bag)):
        evals: dict[str, Any] = {}
        boosters.append(lgb.train(
            {**params, "seed": params["seed"] + i},
            lgb.Dataset(x, y, weight=w, feature_name=names, free_raw_data=False),
            num_boost_round=rounds,
            valid_sets=[lgb.Dataset(x, y, weight=w), lgb.Dataset(xv, yv, weight=wv)],
            valid_names=["train", "val"],
            callbacks=[lgb.record_evaluation(evals), lgb.early_stopping(40, verbose=False)],
        ))
        logs.append(evals)
    booster = average(boosters)
    bag_rounds = [b.best_iteration or b.current_iteration() for b in boosters]
    fitted = time.perf_counter() - t0
    model = BoundaryModel(booster=booster, decoder=decoder, lexical=lexical_cue)
    # Calibrated on the validation lines' out-of-fold lexical scores: the full cue has read these transcripts.
    scored = [([1.0] + [float(v) for v in booster.predict(features[t.id])[1:]], t) for t in val]
    model.decoder, val_f1 = calibrate(scored, model.decoder)
    model.card = {
        "kind": "lightgbm",
        "rounds": sum(bag_rounds),  # the trees the averaged model scores with
        "bag": len(boosters),
        "bag_rounds": bag_rounds,
        "train_transcripts": len(train),
        "train_windows": len(mid),
        "val_transcripts": len(val),
        "train_lines": len(y),
        "positives": int(y.sum()),
        "val_primary_f1": round(val_f1, 4),
        # The first fit's curves (each fit of a bag stops on its own round).
        "train_loss": [round(v, 5) for v in logs[0]["train"]["binary_logloss"]],
        "val_loss": [round(v, 5) for v in logs[0]["val"]["binary_logloss"]],
        "seconds": round(time.perf_counter() - t0, 1),
        "fit_seconds": round(fitted, 1),
        "lexical_seconds": round(lexical_seconds, 1),
        "lexical_tokens": len(lexical_cue.weights) if lexical_cue is not None else 0,
        "importance": dict(sorted(zip(names, [float(v) for v in booster.feature_importance("gain")]),
                                  key=lambda kv: -kv[1])[:15]),
    }
    return model
