"""SFT / DPO / KTO datasets (HF `datasets`) built from curated transcripts and feedback.

Every row is one window, rendered by prompt.py exactly as inference renders it. SFT rows are in
TRL's conversational prompt/completion form, so the loss falls on the assistant answer only.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaptering import prompt
from chaptering.schema import Chapter, FeedbackEvent, Transcript

GENERIC_TITLES = ["Introduction", "Discussion", "Part 2", "Next topic", "Conclusion", "Chapter"]


@dataclass
class Windowing:
    """How transcripts are cut: the same token budget at training and at inference."""

    tokenizer: Any
    context_tokens: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        self.budget = self.context_tokens - prompt.overhead_tokens(self.tokenizer) - self.max_new_tokens

    def windows(self, t: Transcript) -> list[tuple[int, int]]:
        return prompt.reference_windows(t, prompt.line_token_counts(self.tokenizer, t), self.budget)


def _prompt(t: Transcript, start: int, end: int) -> list[dict[str, str]]:
    return prompt.messages(prompt.window_lines(t, start, end))


def _answer(pairs: list[tuple[int, str]], n_lines: int) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": prompt.render_answer(pairs, n_lines)}]


def sft_rows(transcripts: Iterable[Transcript], win: Windowing) -> Iterator[dict[str, Any]]:
    """One prompt/completion row per window of each labelled transcript."""
    for t in transcripts:
        if not t.chapters:
            continue
        for start, end in win.windows(t):
            yield {
                "prompt": _prompt(t, start, end),
                "completion": _answer(prompt.window_chapters(t, start, end), end - start),
                "id": t.id,
                "source": t.source,
                "augmented": ",".join(t.meta.get("augmented", [])),
                "window_start": start,
                "n_lines": end - start,
                "n_chapters": len(prompt.window_chapters(t, start, end)),
            }


def sample_rows(ds: Any, n: int, seed: int, single_chapter_weight: float = 0.25, balance_sources: bool = True,
                source_shares: dict[str, float] | None = None) -> Any:
    """Pick `n` rows for a CPU-sized training budget, weighted so the model sees boundaries.

    Long meetings and lectures cut into windows give mostly single-chapter windows (60% here), and a
    model trained on that mix learns to answer with one chapter. Each source family (before the `/`)
    gets the share `source_shares` names, the families not named split the rest equally (or, without
    `balance_sources`, take rows in proportion to the pool), and windows without a boundary are
    down-weighted.
    """
    import numpy as np

    if n >= len(ds):
        return ds.shuffle(seed=seed)
    families = [str(s).split("/")[0] for s in ds["source"]]
    sizes = Counter(families)
    named = {f: v for f, v in (source_shares or {}).items() if f in sizes}
    rest = [f for f in sizes if f not in named]
    left = max(0.0, 1.0 - sum(named.values()))
    share = {**named, **{f: left / len(rest) for f in rest}} if rest else named
    if not balance_sources and not named:
        share = {f: sizes[f] / len(families) for f in sizes}
    w = np.array([share[f] / sizes[f] * (single_chapter_weight if k <= 1 else 1.0)
                  for f, k in zip(families, ds["n_chapters"])])
    idx = np.random.default_rng(seed).choice(len(ds), size=n, replace=False, p=w / w.sum())
    return ds.select(idx.tolist())


def hard_negative(pairs: list[tuple[int, str]], n_lines: int, rng: random.Random) -> list[tuple[int, str]] | None:
    """A plausible but wrong answer: shifted boundaries, merged or split chapters, or generic titles."""
    kinds = ["shift", "generic"] + (["merge"] if len(pairs) > 1 else []) + (["split"] if n_lines > 4 else [])
    kind = rng.choice(kinds)
    out = list(pairs)
    if kind == "shift" and len(out) > 1:
        i = rng.randrange(1, len(out))
        lo = out[i - 1][0] + 1
        hi = out[i + 1][0] - 1 if i + 1 < len(out) else n_lines - 1
        moved = min(max(out[i][0] + rng.choice([-1, 1]) * rng.randint(3, 8), lo), hi)
        if moved == out[i][0]:
            return None
        out[i] = (moved, out[i][1])
    elif kind == "merge":
        del out[rng.randrange(1, len(out))]
    elif kind == "split":
        taken = {s for s, _ in out}
        free = [s for s in range(1, n_lines) if s not in taken]
        if not free:
            return None
        out = sorted(out + [(rng.choice(free), rng.choice(GENERIC_TITLES))])
    else:
        out = [(s, GENERIC_TITLES[i % len(GENERIC_TITLES)]) for i, (s, _) in enumerate(out)]
    return out if out != pairs else None


def dpo_rows_synthetic(
    transcripts: Iterable[Transcript], win: Windowing, seed: int, per_transcript: int = 1
) -> Iterator[dict[str, Any]]:
    """Reference (chosen) vs a hard negative (rejected), for windows of labelled transcripts."""
    rng = random.Random(seed)
    for t in transcripts:
        if not t.chapters:
            continue
        windows = win.windows(t)
        for start, end in rng.sample(windows, min(per_transcript, len(windows))):
            chosen = prompt.window_chapters(t, start, end)
            rejected = hard_negative(chosen, end - start, rng)
            if rejected is not None:
                n = end - start
                yield {"prompt": _prompt(t, start, end), "chosen": _answer(chosen, n), "rejected": _answer(rejected, n),
                       "id": t.id, "origin": "synthetic"}


def _with_chapters(t: Transcript, chapters: list[Chapter]) -> Transcript:
    return t.model_copy(update={"chapters": chapters})


def dpo_rows_feedback(events: Iterable[tuple[FeedbackEvent, Transcript]], win: Windowing) -> Iterator[dict[str, Any]]:
    """An edit is a preference: chosen = the user's chapters, rejected = what the model said."""
    for ev, t in events:
        if ev.corrected is None:
            continue
        good, bad = _with_chapters(t, ev.corrected), _with_chapters(t, ev.predicted)
        for start, end in win.windows(good):
            chosen, rejected = prompt.window_chapters(good, start, end), prompt.window_chapters(bad, start, end)
            if chosen != rejected:
                n = end - start
                yield {"prompt": _prompt(t, start, end), "chosen": _answer(chosen, n), "rejected": _answer(rejected, n),
                       "id": t.id, "origin": f"feedback:{ev.user_id}"}


def kto_rows_feedback(events: Iterable[tuple[FeedbackEvent, Transcript]], win: Windowing) -> Iterator[dict[str, Any]]:
    """A bare accept/reject is a KTO example: the prediction, labelled desirable or not."""
    for ev, t in events:
        if ev.rating is None:
            continue
        shown = _with_chapters(t, ev.predicted)
        for start, end in win.windows(shown):
            answer = _answer(prompt.window_chapters(shown, start, end), end - start)
            yield {"prompt": _prompt(t, start, end), "completion": answer, "label": ev.rating == "accept", "id": t.id}


@dataclass
class DatasetStats:
    rows: int = 0
    per_source: Counter = field(default_factory=Counter)
    chapters_per_window: Counter = field(default_factory=Counter)
    token_hist: Counter = field(default_factory=Counter)  # bucketed by 256 tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "per_source": dict(self.per_source),
            "chapters_per_window": {str(k): v for k, v in sorted(self.chapters_per_window.items())},
            "tokens_histogram": {f"{k}-{k + 255}": v for k, v in sorted(self.token_hist.items())},
        }


def save_rows(rows: Iterable[dict[str, Any]], out_dir: Path, tokenizer: Any | None = None) -> tuple[str, DatasetStats]:
    """Stream rows to JSONL, then into an Arrow dataset on disk; returns a content fingerprint + stats.

    Memory stays flat (one row at a time), and a private cache folder means `datasets` can never hand
    back a stale build. An empty split (no feedback yet) is an empty folder with a fingerprint.
    """
    import shutil
    import tempfile

    from datasets import Dataset

    stats = DatasetStats()
    digest = hashlib.sha256()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        jsonl = Path(scratch) / "rows.jsonl"
        with jsonl.open("w", encoding="utf-8") as f:
            for r in rows:
                line = json.dumps(r, sort_keys=True, ensure_ascii=False)
                digest.update(line.encode())
                f.write(line + "\n")
                stats.rows += 1
                stats.per_source[r.get("source", r.get("origin", "feedback"))] += 1
                answer = (r.get("completion") or r.get("chosen"))[0]["content"]
                stats.chapters_per_window[len(prompt.parse_answer(answer, 10**9).chapters)] += 1
                if tokenizer is not None:
                    text = "".join(m["content"] for m in r["prompt"]) + answer
                    stats.token_hist[len(tokenizer(text)["input_ids"]) // 256 * 256] += 1
        if stats.rows:
            Dataset.from_json(str(jsonl), cache_dir=scratch).save_to_disk(str(tmp))
        else:
            tmp.mkdir(parents=True)
    fp = digest.hexdigest()[:16]
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    (out_dir / "fingerprint.txt").write_text(fp + "\n")
    return fp, stats


def load_rows(path: Path) -> Any:
    """A saved dataset, or None when that split had no rows (e.g. no feedback yet)."""
    from datasets import load_from_disk

    return load_from_disk(str(path)) if (path / "dataset_info.json").is_file() else None
