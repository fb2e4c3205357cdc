"""Decoding the tagged answer (`n + Title` / `n =`, see prompt.py) with the structure filled in.

The decoder writes the line numbers and newlines itself; the model only decides, per line, whether a
chapter starts there (` +` against ` =`) and writes the titles. So every answer covers every line of
the window exactly once, line 0 opens a chapter, and nothing can loop or run past the window.

Two ways to make the per-line decision:
- `generate(..., threshold)`: line by line, start where P(+) / (P(+) + P(=)) >= threshold.
- `start_scores` then `generate(..., starts=...)`: score every line in one pass, let the caller pick
  the starts (ranked decoding, predict.py), then write titles for exactly those. A small model's P(+)
  is poorly calibrated (rare starts sit far below 0.5) but ranks lines usefully, so picking the top
  lines beats any fixed threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import suppress
from functools import lru_cache
from typing import Any

MAX_TITLE_TOKENS = 24


@lru_cache(maxsize=4)
def tag_token_ids(tokenizer: Any) -> dict[str, Any]:
    def one(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"tokenizer splits {text!r} into {len(ids)} tokens; the tag decoder needs one")
        return ids[0]

    return {"start": one(" +"), "same": one(" ="), "newline": one("\n"),
            "digits": {d: one(d) for d in "0123456789"}}


def start_probability(logits: Any, ids: dict[str, Any]) -> float:
    """P(+) against P(=) only: the two answers the format allows at a tag."""
    import torch

    pair = torch.stack([logits[ids["start"]], logits[ids["same"]]]).float()
    return float(torch.softmax(pair, 0)[0])


def _number(i: int, ids: dict[str, Any]) -> list[int]:
    return [ids["digits"][d] for d in str(i)]


class _Stopped(Exception):
    pass


class _Feeder:
    """Feeds tokens to the model through one KV cache; polls `stop` before each forward pass."""

    def __init__(self, model: Any, stop: Callable[[], bool] | None) -> None:
        self.model, self.stop, self.cache = model, stop, None

    def __call__(self, tokens: list[int]) -> Any:
        import torch

        if self.stop is not None and self.stop():
            raise _Stopped
        out = self.model(input_ids=torch.tensor([tokens], device=self.model.device), past_key_values=self.cache,
                         use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0]


def _title(feed: _Feeder, tok: Any, logits: Any, max_tokens: int) -> list[int]:
    """Greedy title tokens after ` +` (whose logits are given), until the line ends; all fed."""
    import torch

    title: list[int] = []
    for _ in range(max_tokens):
        nxt = int(torch.argmax(logits))
        if nxt == tok.eos_token_id or "\n" in tok.decode([nxt]):
            break
        title.append(nxt)
        logits = feed([nxt])[-1]
    return title


def generate(model: Any, tok: Any, input_ids: Any, n_lines: int, threshold: float = 0.5,
             max_title_tokens: int = MAX_TITLE_TOKENS, stop: Callable[[], bool] | None = None,
             starts: Collection[int] | None = None) -> list[int]:
    """One window's tagged answer, token ids. With `starts`, exactly those lines (and line 0) open
    chapters and the lines between go in as one forward pass; without, each line is a forward pass
    and P(+) >= threshold decides. `stop` is polled before each pass (serving's deadline): when it
    says so, the answer so far comes back, truncated."""
    import torch

    ids = tag_token_ids(tok)
    feed = _Feeder(model, stop)
    gen: list[int] = []
    todo = input_ids[0].tolist()  # tokens written but not yet fed to the model
    with torch.inference_mode(), suppress(_Stopped):
        for i in range(n_lines):
            line = ([ids["newline"]] if i else []) + _number(i, ids)
            gen += line
            if i == 0 or starts is not None:
                todo += line
                opens = i == 0 or i in starts  # type: ignore[operator]
            else:
                opens = start_probability(feed(todo + line)[-1], ids) >= threshold
                todo = []
            if not opens:
                gen.append(ids["same"])
                todo.append(ids["same"])
                continue
            logits = feed(todo + [ids["start"]])[-1]
            todo = []
            gen += [ids["start"]] + _title(feed, tok, logits, max_title_tokens)
    return gen


def start_scores(model: Any, tok: Any, input_ids: Any, n_lines: int, max_title_tokens: int = MAX_TITLE_TOKENS,
                 stop: Callable[[], bool] | None = None) -> list[float]:
    """P(+) for lines 1..n-1 of a window, each as if no line since line 0 had opened a chapter: line
    0's title is generated, then the rest of the answer (`1 =`, `2 =`, ...) is read in one pass."""
    import torch

    ids = tag_token_ids(tok)
    feed = _Feeder(model, stop)
    with torch.inference_mode(), suppress(_Stopped):  # stopped: no line scores above another
        logits = feed(input_ids[0].tolist() + _number(0, ids) + [ids["start"]])[-1]
        _title(feed, tok, logits, max_title_tokens)
        rest: list[int] = []
        ends: list[int] = []  # index in `rest` of each line's last digit: its logits give the tag
        for i in range(1, n_lines):
            rest += [ids["newline"]] + _number(i, ids)
            ends.append(len(rest) - 1)
            rest.append(ids["same"])
        if not ends:
            return []
        logits = feed(rest)
        return [start_probability(logits[e], ids) for e in ends]
    return [0.0] * (n_lines - 1)
