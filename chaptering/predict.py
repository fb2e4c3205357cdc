"""Chapterer: transcript -> chapters, with windows that fit the model's context.

A window holds as many numbered lines as fit; the next window starts at the last chapter found (its
end was not seen yet), so every segment of a long meeting is covered and no chapter is cut blindly.
A line longer than a quarter of the window's budget is clipped for the model first (`fit_lines`): a
window always admits one line, so one huge segment would otherwise make one prompt far past the
context, and a forward pass that no deadline can interrupt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from chaptering import prompt
from chaptering.schema import Chapterer, PredictedChapter, Prediction, Transcript

Decoding = Literal["ranked", "tagged", "free"]


class LLMChapterer:
    """Chapterer over a causal LM; `style="seed"` uses the seed's start_text prompt.

    `decoding` (constrain.py writes the answer's structure in the first two):
    - ranked: score every line's P(+) in one pass per window, open chapters at the best-ranked lines
      (as many as the transcript's length suggests, baselines.expected_chapters), then write titles;
    - tagged: line by line, open a chapter where P(+) >= start_threshold;
    - free: plain greedy generation, parsed afterwards.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        context_tokens: int = 2048,
        max_new_tokens: int = 200,
        style: Literal["lines", "seed"] = "lines",
        repetition_penalty: float = 1.0,
        decoding: Decoding = "free",
        start_threshold: float = 0.5,
        min_chapter_lines: int = 2,
    ) -> None:
        self.model, self.tok, self.name = model, tokenizer, name
        self.repetition_penalty = repetition_penalty
        self.decoding, self.start_threshold, self.min_chapter_lines = decoding, start_threshold, min_chapter_lines
        self.should_stop: Callable[[], bool] | None = None  # serving sets its deadline check here
        self.max_new_tokens, self.style = max_new_tokens, style
        limit = getattr(model.config, "max_position_embeddings", context_tokens) or context_tokens
        self.context_tokens = min(context_tokens, limit)
        overhead = prompt.overhead_tokens(tokenizer, self._messages_for([]))
        self.line_budget = self.context_tokens - overhead - max_new_tokens
        if self.line_budget < 32:
            raise ValueError(f"context of {self.context_tokens} tokens leaves no room for transcript lines")
        self.max_line_tokens = max(16, self.line_budget // 4)

    def _stopped(self) -> bool:
        """Serving's deadline has passed: walk no further windows (the answer is dropped anyway)."""
        return self.should_stop is not None and self.should_stop()

    def _messages_for(self, lines: list[str]) -> list[dict[str, str]]:
        if self.style == "seed":
            return [{"role": "user", "content": prompt.SEED_INSTRUCTION + "\n".join(lines)}]
        return prompt.messages(lines)

    def _encode(self, msgs: list[dict[str, str]]) -> Any:
        return self.tok.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.model.device)

    def generate(self, msgs: list[dict[str, str]], n_lines: int | None = None,
                 starts: set[int] | None = None) -> tuple[str, int]:
        """Greedy answer for one window. With `n_lines` and a structured decoding (or forced `starts`),
        constrain.py writes the line numbers and the model only tags lines and writes titles."""
        import torch

        enc = self._encode(msgs)
        if n_lines is not None and (starts is not None or self.decoding != "free"):
            from chaptering import constrain

            ids = constrain.generate(self.model, self.tok, enc["input_ids"], n_lines, self.start_threshold,
                                     stop=self.should_stop, starts=starts)
            return self.tok.decode(ids, skip_special_tokens=True), len(ids)
        budget = self.max_new_tokens + prompt.ANSWER_LINE_TOKENS * (n_lines or 0)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=budget,
                do_sample=False,
                repetition_penalty=self.repetition_penalty,
                pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
            )
        new = out[0, enc["input_ids"].shape[1] :]
        return self.tok.decode(new, skip_special_tokens=True), int(new.shape[0])

    def _line_counts(self, t: Transcript) -> list[int]:
        """Tokens each segment adds to a window, as this chapterer's prompt renders it."""
        if self.style == "seed":  # raw text, one line each
            ids = self.tok([s.text for s in t.segments], add_special_tokens=False)["input_ids"]
            return [len(x) + 1 for x in ids]
        return prompt.line_token_counts(self.tok, t)

    def fit_lines(self, t: Transcript) -> tuple[Transcript, list[int]]:
        """`t` with every line at most `max_line_tokens` (over-long segment text clipped, marked with
        " …"; indices and times unchanged, so chapters map back as they are), and its line counts."""
        counts = self._line_counts(t)
        over = [i for i, n in enumerate(counts) if n > self.max_line_tokens]
        if not over:
            return t, counts
        segments = list(t.segments)
        for i in over:
            segments[i] = segments[i].model_copy(update={"text": self._clip(t, i)})
        clipped = t.model_copy(update={"segments": segments})
        return clipped, self._line_counts(clipped)

    def _clip(self, t: Transcript, i: int) -> str:
        """Segment i's text cut to the first tokens that keep its rendered line within the cap."""
        ids = self.tok(t.segments[i].text, add_special_tokens=False)["input_ids"]
        keep = self.max_line_tokens - 2 * prompt.ANSWER_LINE_TOKENS - 8  # time, number, answer tag
        while keep > 0:
            text = self.tok.decode(ids[:keep]).strip() + " …"
            probe = t.model_copy(update={"segments": [t.segments[i].model_copy(update={"text": text})]})
            if self._line_counts(probe)[0] <= self.max_line_tokens:
                return text
            keep //= 2
        return "…"

    def _window(self, t: Transcript, start: int, end: int) -> tuple[prompt.ParseResult, int]:
        if self.style == "seed":
            text, n = self.generate(prompt.seed_messages(t, start, end))
            return prompt.parse_seed_answer(text, t, start, end), n
        text, n = self.generate(prompt.messages(prompt.window_lines(t, start, end)), n_lines=end - start)
        return prompt.parse_answer(text, end - start), n

    def predict(self, t: Transcript) -> Prediction:
        if self.decoding == "ranked" and self.style == "lines":
            return self._predict_ranked(t)
        t0 = time.perf_counter()
        t, counts = self.fit_lines(t)
        chapters: list[tuple[int, str]] = []
        healths: list[str] = []
        repairs: list[str] = []
        tokens = windows = 0
        start, continues = 0, False
        while start < len(t.segments) and not self._stopped():
            end = prompt.fit_window(counts, start, self.line_budget)
            result, n = self._window(t, start, end)
            tokens, windows = tokens + n, windows + 1
            healths.append(result.health)
            repairs += result.repairs
            found = [(start + s, title) for s, title in result.chapters]
            if continues:
                found = found[1:]  # a forced cut, not a chapter the model chose
            elif chapters and chapters[-1][0] == start:
                chapters.pop()  # re-predicted with its whole extent in view: keep the new title
            chapters += found
            if end >= len(t.segments):
                break
            start, continues = prompt.next_window_start(start, end, chapters[-1][0])
        health = (
            "unusable" if all(h == "unusable" for h in healths)
            else "repaired" if any(h != "clean" for h in healths) else "clean"
        )
        return Prediction(
            id=t.id,
            model=self.name,
            chapters=[PredictedChapter(title=ti, start_segment=s, start=t.segments[s].start) for s, ti in chapters],
            meta={
                "health": health,
                "repairs": repairs,
                "windows": windows,
                "generated_tokens": tokens,
                "latency_s": round(time.perf_counter() - t0, 3),
            },
        )


    def _predict_ranked(self, t: Transcript) -> Prediction:
        """Score, pick, title. Windows overlap by one line, so every line but the first is scored once
        with at least one line of context before it (a window's own line 0 is not a decision)."""
        from chaptering import constrain
        from chaptering.baselines import expected_chapters, top_starts

        t0 = time.perf_counter()
        t, counts = self.fit_lines(t)
        windows: list[tuple[int, int]] = []
        start = 0
        while True:
            end = prompt.fit_window(counts, start, self.line_budget)
            windows.append((start, end))
            if end >= len(t.segments):
                break
            start = end - 1 if end - start > 1 else end
        scores = [0.0] * len(t.segments)
        for start, end in windows:
            if self._stopped():
                break
            enc = self._encode(prompt.messages(prompt.window_lines(t, start, end)))
            got = constrain.start_scores(self.model, self.tok, enc["input_ids"], end - start, stop=self.should_stop)
            scores[start + 1:end] = got
        starts = top_starts(len(t.segments), [-p for p in scores[1:]], expected_chapters(t) - 1,
                            self.min_chapter_lines)
        titles: dict[int, str] = {}
        tokens = 0
        for start, end in windows:
            inside = {s - start for s in starts if start < s < end or s == start == 0}
            if not inside or self._stopped():
                continue
            text, n = self.generate(prompt.messages(prompt.window_lines(t, start, end)), end - start, inside)
            tokens += n
            titles.update({start + s: title for s, title in prompt.tagged_titles(text).items() if s in inside})
        untitled = [s for s in starts if not titles.get(s)]
        return Prediction(
            id=t.id,
            model=self.name,
            chapters=[PredictedChapter(title=titles.get(s) or f"Chapter {i + 1}", start_segment=s,
                                       start=t.segments[s].start) for i, s in enumerate(starts)],
            meta={
                "health": "repaired" if untitled else "clean",
                "repairs": [f"filled empty title at {s}" for s in untitled],
                "windows": len(windows),
                "generated_tokens": tokens,
                "start_scores": [round(p, 4) for p in scores],
                "latency_s": round(time.perf_counter() - t0, 3),
            },
        )


def predict_all(chapterer: Chapterer, transcripts: Iterable[Transcript], progress: bool = True) -> Iterable[Prediction]:
    """Predict lazily with a progress bar (tqdm writes to stderr, so stdout stays clean for --json)."""
    from tqdm.auto import tqdm

    items = list(transcripts) if progress else transcripts
    for t in tqdm(items, desc=getattr(chapterer, "name", "predict"), unit="transcript", disable=not progress):
        yield chapterer.predict(t)


def llm_options(cfg: Mapping[str, Any], adapter: Path | None = None) -> dict[str, Any]:
    """LLMChapterer keyword arguments from model settings (a `ModelSettings` dump, or the model_config a
    version was logged with): the one place that turns settings into decoding options, so the CLI, the
    service and a registered pyfunc decode alike. Without a set threshold, the one calibrated beside the
    adapter; versions logged before `decoding` existed decode as they did then."""
    from chaptering.calibrate import read_threshold

    threshold = cfg.get("start_threshold")
    if threshold is None:
        threshold = read_threshold(adapter) or 0.5
    return {
        "context_tokens": int(cfg.get("context_tokens", 1024)),
        "max_new_tokens": int(cfg.get("max_new_tokens", 160)),
        "repetition_penalty": float(cfg.get("repetition_penalty", 1.0)),
        "decoding": str(cfg.get("decoding") or ("tagged" if cfg.get("structured_decoding") else "free")),
        "start_threshold": float(threshold),
    }
