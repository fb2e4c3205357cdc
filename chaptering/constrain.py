"""Decoding the tagged answer (`n + Title` / `n =`, see prompt.py) with the structure filled in.

The decoder writes the line numbers and newlines itself; the model only decides, per line, whether a
chapter starts there (` +` against ` =`) and writes the titles. So every answer covers every line of
the window exactly once, line 0 opens a chapter, and nothing can loop or run past the window. The
decision is P(+) / (P(+) + P(=)) >= threshold: at 0.5 this is greedy decoding; the threshold is the
one knob that trades chapter count against precision, set from settings and recorded with results.
"""

from __future__ import annotations

from contextlib import suppress
from functools import lru_cache
from typing import Any, Callable

MAX_TITLE_TOKENS = 24


@lru_cache(maxsize=4)
def _token_ids(tokenizer: Any) -> dict[str, Any]:
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


def generate(model: Any, tok: Any, input_ids: Any, n_lines: int, threshold: float = 0.5,
             max_title_tokens: int = MAX_TITLE_TOKENS, stop: Callable[[], bool] | None = None) -> list[int]:
    """One window's tagged answer, token ids. One forward pass per line (its number, tag and newline
    go in together), plus one per title token. `stop` is polled before each pass (serving's deadline):
    when it says so, the answer so far comes back, truncated."""
    import torch

    ids = _token_ids(tok)
    eos = {tok.eos_token_id}
    gen: list[int] = []

    def number(i: int) -> list[int]:
        return [ids["digits"][d] for d in str(i)]

    def model_step(step: list[int], cache: Any) -> Any:
        if stop is not None and stop():
            raise _Stopped
        return model(input_ids=torch.tensor([step]), past_key_values=cache, use_cache=True)

    with torch.inference_mode(), suppress(_Stopped):
        step = input_ids[0].tolist() + number(0)
        cache = None
        for i in range(n_lines):
            out = model_step(step, cache)
            cache, logits = out.past_key_values, out.logits[0, -1]
            gen += step if i else number(0)
            if i and start_probability(logits, ids) < threshold:
                step = [ids["same"], ids["newline"]] + number(i + 1)
                continue
            title: list[int] = [ids["start"]]
            for _ in range(max_title_tokens):  # greedy title, until the line ends
                out = model_step(title[-1:], cache)
                cache, nxt = out.past_key_values, int(torch.argmax(out.logits[0, -1]))
                if nxt in eos or "\n" in tok.decode([nxt]):
                    break
                title.append(nxt)
            gen += title
            step = [ids["newline"]] + number(i + 1)
        if step[0] == ids["same"]:
            gen.append(ids["same"])  # the last line's tag (nothing follows it)
    return gen


class _Stopped(Exception):
    pass
