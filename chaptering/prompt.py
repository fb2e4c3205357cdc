"""One prompt for training, evaluation and serving: render a transcript window, parse the answer.

The model sees numbered lines `(03:41) text [12]` (numbers relative to the window, times absolute)
and answers with one line per transcript line: `12 + Title` where a chapter starts, `12 =` where the
chapter goes on. The dense answer is on purpose: a list of 3-4 start numbers gave a 135M model 3-4
supervised decisions per window and it never learned where topics change (it answered line 10 on most
videos); a tag per line gives it one decision per line. The parser also reads JSON lists (the v1/v2
answer, and what base models write), repairs what it can, and says what it repaired so evaluation can
report output health.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chaptering.schema import Chapter, Transcript

PROMPT_VERSION = "lines-tags-v3"  # v2: the line number closes the line; v3: one answer line per line
ANSWER_LINE_TOKENS = 5  # `12 =\n` and its like: what each line adds to the answer, on top of its text
# Part of every cached evaluation's key: a change in what a decoder outputs changes the numbers
# (v3: ranked decoding keeps titles as written).
PARSER_VERSION = "repair-v3"
LINE_WORDS = 40  # long turns are cut so a window holds more of the story
LINE_CHARS = 400  # and so is a "word" of junk: one line can never outgrow the context window
MAX_TITLE_WORDS = 10
MAX_TITLE_CHARS = 80

SYSTEM = "You split video transcripts into chapters and give each chapter a short title."
INSTRUCTION = (
    "Split this transcript into chapters. Each line is `(time) text [n]`. Answer with one line per "
    "transcript line, in order: `n + Title` if a new chapter starts at line n (line 0 always does; short "
    "titles, 2-6 words), otherwise `n =`.\n\n"
)

SEED_INSTRUCTION = (
    "Divide the following video transcript into chapters. Return a JSON list where each item has "
    '"title" (a short chapter title) and "start_text" (the exact first sentence of the chapter, copied '
    "from the transcript). Return only JSON.\n\nTranscript:\n"
)


def fmt_time(seconds: float) -> str:
    s = int(seconds)
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def render_line(i: int, text: str, start: float | None) -> str:
    """`(time) text [i]`: the number comes after the text on purpose. In a causal model a token only sees
    what precedes it, so a leading `[12]` knows nothing of line 12 and answering "12" takes two hops
    (find the topic shift, then the number before it); a trailing `[12]` has read line 12 and can be
    copied directly. With the number first, v1 answered 10, 12, 14, ... regardless of the content."""
    words = text.split()
    body = " ".join(words[:LINE_WORDS])
    if len(words) > LINE_WORDS or len(body) > LINE_CHARS:
        body = body[:LINE_CHARS] + " …"
    return f"({fmt_time(start)}) {body} [{i}]" if start is not None else f"{body} [{i}]"


def window_lines(t: Transcript, start: int, end: int) -> list[str]:
    """Lines for segments [start, end), numbered from 0 within the window."""
    return [render_line(i - start, s.text, s.start) for i, s in enumerate(t.segments[start:end], start)]


def messages(lines: Sequence[str], answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one window; with `answer`, the assistant turn that SFT learns."""
    msgs = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": INSTRUCTION + "\n".join(lines)},
    ]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def render_answer(chapters: Sequence[tuple[int, str]], n_lines: int) -> str:
    """The exact assistant text for relative (start, title) pairs over a window of n_lines lines."""
    titles = dict(chapters)
    return "\n".join(f"{i} + {titles[i]}" if i in titles else f"{i} =" for i in range(n_lines))


def window_chapters(t: Transcript, start: int, end: int) -> list[tuple[int, str]]:
    """Reference chapters inside a window, relative; the window always opens a chapter at 0."""
    assert t.chapters is not None
    inside = [(c.start_segment - start, c.title) for c in t.chapters if start <= c.start_segment < end]
    if not inside or inside[0][0] != 0:
        # The window starts mid-chapter: the chapter running into it is chapter 0 here.
        before = [c.title for c in t.chapters if c.start_segment < start]
        inside.insert(0, (0, before[-1] if before else t.chapters[0].title))
    return inside


def fit_window(line_tokens: Sequence[int], start: int, budget: int) -> int:
    """End (exclusive) of the longest window from `start` whose lines fit in `budget` tokens (>= 1 line)."""
    used, end = 0, start
    while end < len(line_tokens) and (used + line_tokens[end] <= budget or end == start):
        used += line_tokens[end]
        end += 1
    return end


def next_window_start(start: int, end: int, last_chapter: int) -> tuple[int, bool]:
    """Where the next window opens, and whether its first chapter continues the previous one.

    As in Chapter-Llama, a new window starts at the last chapter found (its end was not seen); if that
    chapter began in the first half of the window, restarting there would crawl, so we cut at the end.
    """
    if last_chapter > start and last_chapter - start >= (end - start) // 2:
        return last_chapter, False
    return end, True


def line_token_counts(tokenizer: Any, t: Transcript) -> list[int]:
    """Tokens per rendered line. Absolute numbering has at least as many digits as window-relative
    numbering, so this over-estimates slightly: windows never overflow."""
    lines = [render_line(i, s.text, s.start) + "\n" for i, s in enumerate(t.segments)]
    return [len(ids) + ANSWER_LINE_TOKENS for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]


def overhead_tokens(tokenizer: Any, msgs: list[dict[str, str]] | None = None) -> int:
    """Tokens of the chat scaffolding around an empty window (system, instruction, generation prompt)."""
    enc = tokenizer.apply_chat_template(
        msgs if msgs is not None else messages([]), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return len(enc["input_ids"])


def reference_windows(t: Transcript, counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """The windows inference would walk if the model predicted the reference chapters exactly."""
    out, start = [], 0
    while start < len(t.segments):
        end = fit_window(counts, start, budget)
        out.append((start, end))
        if end >= len(t.segments):
            break
        last = max(c.start_segment for c in t.chapters or [] if c.start_segment < end) if t.chapters else 0
        start, _ = next_window_start(start, end, last)
    return out


@dataclass
class ParseResult:
    chapters: list[tuple[int, str]]  # relative starts, validated
    health: Literal["clean", "repaired", "unusable"]
    repairs: list[str] = field(default_factory=list)


_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_START = re.compile(r"[\"']?start[\"']?\s*:\s*[\"']?(\d+)")
_TITLE = re.compile(r"[\"']?title[\"']?\s*:\s*[\"']((?:[^\"'\\]|\\.)*)")
_TAG = re.compile(r"^[ \t]*(\d+)[ \t]*([+=])[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def _loads_list(text: str) -> tuple[list[Any] | None, list[str]]:
    """Find a JSON list in model text, noting each repair needed to get one."""
    repairs: list[str] = []
    body = text.strip()
    if _FENCE.search(body):
        body = _FENCE.sub("", body).strip()
        repairs.append("stripped code fence")
    lo = body.find("[")
    if lo == -1:
        return None, repairs
    hi = body.rfind("]")
    if lo > 0 or (hi != -1 and hi < len(body) - 1):
        repairs.append("stripped text around JSON")
    candidate = body[lo : hi + 1] if hi > lo else body[lo:]
    for attempt in range(3):
        try:
            value = json.loads(candidate)
            return (value if isinstance(value, list) else None), repairs
        except json.JSONDecodeError:
            pass
        if attempt == 0 and _TRAILING_COMMA.search(candidate):
            candidate = _TRAILING_COMMA.sub(r"\1", candidate)
            repairs.append("removed trailing comma")
        elif attempt <= 1:
            cut = candidate.rfind("}")  # truncated answer: keep the complete objects
            if cut == -1:
                break
            candidate = _TRAILING_COMMA.sub(r"\1", candidate[: cut + 1] + "]")
            repairs.append("closed truncated list")
    # Last resort: pull start/title pairs out of object-looking fragments.
    items = []
    for obj in _OBJECT.findall(body[lo:]):
        s, t = _START.search(obj), _TITLE.search(obj)
        if s and t:
            items.append({"start": int(s.group(1)), "title": t.group(1)})
    if items:
        repairs.append("extracted objects from invalid JSON")
        return items, repairs
    return None, repairs


_TITLE_STRIP = " \"'#*-:"


def clean_title(title: str) -> str:
    words = " ".join(str(title).split()).strip(_TITLE_STRIP).split()
    return " ".join(words[:MAX_TITLE_WORDS])[:MAX_TITLE_CHARS].strip()


def kept_title(answer: str) -> str:
    """The title a titler keeps of a generated answer: its first non-blank line, cleaned."""
    return clean_title(answer.strip().split("\n")[0])


def title_settled(answer: str) -> bool:
    """Whether no continuation of `answer` can change `kept_title(answer)`: its first line has ended, or
    more than MAX_TITLE_WORDS words follow the leading strip, one of the extra ones not made of stripped
    marks only (those could still be stripped from the end, into the last kept word). Decoding stops there."""
    head = answer.lstrip()
    if "\n" in head:
        return True
    words = " ".join(head.split()).lstrip(_TITLE_STRIP).split()
    return any(w.strip(_TITLE_STRIP) for w in words[MAX_TITLE_WORDS:])


def _tagged(text: str) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Chapter starts from the tagged answer (`n + Title` / `n =` lines); None if it has no tag lines."""
    tags = _TAG.findall(text)
    if not tags:
        return None, []
    items = [{"start": int(n), "title": title} for n, tag, title in tags if tag == "+"]
    if not items:  # every line said "goes on": one chapter
        return [{"start": 0, "title": ""}], ["no line tagged as a chapter start"]
    return items, []


def tagged_titles(text: str) -> dict[int, str]:
    """Line -> cleaned title for every `n + Title` line, as written: for answers whose chapter starts
    were decided outside the text (ranked decoding), so no repair may move or merge them."""
    return {int(n): clean_title(title) for n, tag, title in _TAG.findall(text) if tag == "+"}


def parse_answer(text: str, n_lines: int) -> ParseResult:
    """Validate model output against the window; repair what can be repaired, say what was done."""
    items, repairs = _tagged(text)
    if items is None:
        items, repairs = _loads_list(text)
    if items is None:
        return ParseResult([(0, "Chapter 1")], "unusable", repairs + ["no JSON list found"])
    chapters: list[tuple[int, str]] = []
    for item in items:
        if not isinstance(item, dict) or "start" not in item:
            repairs.append("dropped item without start")
            continue
        try:
            start = int(item["start"])
        except (TypeError, ValueError):
            repairs.append(f"dropped non-integer start {item['start']!r}")
            continue
        if not 0 <= start < n_lines:
            repairs.append(f"dropped out-of-range start {start}")
            continue
        if chapters and start <= chapters[-1][0]:
            repairs.append(f"dropped non-increasing start {start}")
            continue
        raw = item.get("title")
        title = clean_title(raw) if isinstance(raw, str) else ""
        if title != (raw if isinstance(raw, str) else None):
            repairs.append("trimmed title" if title else "filled empty title")
        if title and chapters and title.casefold() == chapters[-1][1].casefold():
            repairs.append(f"merged repeated title at {start}")  # a decoding loop, not a new chapter
            continue
        chapters.append((start, title or f"Chapter {len(chapters) + 1}"))
    if not chapters:
        return ParseResult([(0, "Chapter 1")], "unusable", repairs + ["no valid chapter"])
    if chapters[0][0] != 0:
        chapters[0] = (0, chapters[0][1])
        repairs.append("moved first chapter to 0")
    return ParseResult(chapters, "repaired" if repairs else "clean", repairs)


# --- the seed's format, kept only as a baseline to beat -------------------------------------------


def seed_messages(t: Transcript, start: int, end: int) -> list[dict[str, str]]:
    text = "\n".join(s.text for s in t.segments[start:end])
    return [{"role": "user", "content": SEED_INSTRUCTION + text}]


def parse_seed_answer(text: str, t: Transcript, start: int, end: int, min_score: float = 80.0) -> ParseResult:
    """Map each `start_text` back to the best-matching segment (rapidfuzz); unmatched sentences drop."""
    from rapidfuzz import fuzz, process

    items, repairs = _loads_list(text)
    if items is None:
        return ParseResult([(0, "Chapter 1")], "unusable", repairs + ["no JSON list found"])
    choices = [s.text for s in t.segments[start:end]]
    rebuilt = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("start_text"), str):
            repairs.append("dropped item without start_text")
            continue
        hit = process.extractOne(item["start_text"], choices, scorer=fuzz.partial_ratio)
        if hit is None or hit[1] < min_score:
            repairs.append("start_text matched no segment")
            continue
        rebuilt.append({"start": hit[2], "title": item.get("title", "")})
    rebuilt.sort(key=lambda d: d["start"])
    result = parse_answer(json.dumps(rebuilt), len(choices))
    result.repairs = repairs + result.repairs
    if result.health == "clean" and repairs:
        result.health = "repaired"
    return result


def chapters_to_pairs(chapters: Sequence[Chapter]) -> list[tuple[int, str]]:
    return [(c.start_segment, c.title) for c in chapters]
