"""Chapter titles from the LLM: one short prompt per chosen chapter (its opening text -> a title).

The boundary model decides where chapters start; the LLM only names them. A title prompt holds the
first lines of one chapter, so it is a few hundred tokens whatever the video's length, and the
generation is a handful of tokens: titles cost per chapter, not per line. SFT rows are rendered here
too, exactly as inference renders the prompt, so training and serving cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from chaptering.prompt import clean_title, kept_title
from chaptering.schema import Transcript

TITLE_PROMPT_VERSION = "title-v1-600"
TITLE_SYSTEM = "You write short chapter titles for video transcripts."
TITLE_INSTRUCTION = "Write a short title (at most 6 words) for the chapter that begins with this text:\n\n"
TITLE_CHARS = 600  # the chapter's opening text (~150 tokens): enough to name it, cheap to read
MAX_TITLE_TOKENS = 16
BATCH_SIZE = 16  # chapters titled per forward pass


def chapter_text(t: Transcript, start: int, end: int, max_chars: int = TITLE_CHARS) -> str:
    """The opening `max_chars` characters of segments [start, end), ASR tags removed."""
    from chaptering.cues import clean_line

    out: list[str] = []
    size = 0
    for seg in t.segments[start:end]:
        text = clean_line(seg.text)
        if not text:
            continue
        out.append(text)
        size += len(text) + 1
        if size >= max_chars:
            break
    return " ".join(out)[:max_chars]


def title_messages(text: str, title: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one chapter; with `title`, the assistant turn that SFT learns."""
    msgs = [{"role": "system", "content": TITLE_SYSTEM}, {"role": "user", "content": TITLE_INSTRUCTION + text}]
    if title is not None:
        msgs.append({"role": "assistant", "content": title})
    return msgs


def title_rows(transcripts: Iterable[Transcript]) -> Iterator[dict[str, Any]]:
    """One prompt/completion row per labelled chapter with a usable title (TRL conversational form)."""
    for t in transcripts:
        n = len(t.segments)
        starts = t.boundaries
        for k, (a, b) in enumerate(zip(starts, [*starts[1:], n])):
            title = clean_title(t.chapters[k].title) if k < len(t.chapters) else ""
            text = chapter_text(t, a, b)
            if not title or not text:
                continue
            yield {
                "prompt": title_messages(text)[:2],
                "completion": [{"role": "assistant", "content": title}],
                "id": t.id,
                "source": t.source,
                "augmented": ",".join(t.meta.get("augmented", [])),
                "window_start": a,
                "n_lines": b - a,
                "n_chapters": 1,
            }


class LLMTitler:
    """Greedy titles from a causal LM (the fine-tuned adapter merged into its base), a batch of chapters
    per forward pass: prompts are left-padded so every row's answer starts at the same position."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = MAX_TITLE_TOKENS,
                 batch_size: int = BATCH_SIZE) -> None:
        self.model, self.tok, self.max_new_tokens, self.batch_size = model, tokenizer, max_new_tokens, batch_size
        self.should_stop: Callable[[], bool] | None = None  # serving's deadline check

    def _batch(self, texts: Sequence[str]) -> list[str]:
        import torch

        prompts = [self.tok.apply_chat_template(title_messages(x)[:2], add_generation_prompt=True, tokenize=False)
                   for x in texts]
        side = self.tok.padding_side
        self.tok.padding_side = "left"
        try:
            enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            self.tok.padding_side = side
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        answers = self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [kept_title(a) for a in answers]

    def title(self, text: str) -> str:
        return self._batch([text])[0]

    def titles(self, t: Transcript, starts: Sequence[int]) -> tuple[list[str], int]:
        """A title per chapter ("" where none came, or the deadline passed) and how many were written."""
        n = len(t.segments)
        texts = [chapter_text(t, a, b) for a, b in zip(starts, [*starts[1:], n])]
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            if self.should_stop is not None and self.should_stop():
                out += [""] * len(chunk)
                continue
            out += self._batch(chunk)
        return out, sum(1 for x in out if x)


def title_dpo_rows(events: Iterable[tuple[Any, Transcript]]) -> Iterator[dict[str, Any]]:
    """A retitled chapter is a preference: chosen = the user's title, rejected = the one we served.

    Only chapters whose start the user kept are pairs: a moved boundary changes the text, so the old
    title was not an answer to the same prompt (moved boundaries teach the boundary model instead).
    """
    for ev, t in events:
        if ev.corrected is None:
            continue
        served = {c.start_segment: c.title for c in ev.predicted}
        starts = [c.start_segment for c in ev.corrected]
        for c, end in zip(ev.corrected, [*starts[1:], len(t.segments)]):
            old, new = clean_title(served.get(c.start_segment, "")), clean_title(c.title)
            if old and new and old != new:
                yield {"prompt": title_messages(chapter_text(t, c.start_segment, end))[:2],
                       "chosen": [{"role": "assistant", "content": new}],
                       "rejected": [{"role": "assistant", "content": old}],
                       "id": t.id, "origin": f"feedback:{ev.user_id}"}
