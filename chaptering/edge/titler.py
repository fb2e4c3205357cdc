"""Chapter titles from the exported title LM, on llama.cpp (a GGUF) or onnxruntime (the int8 ONNX graph):
the prompt of titles.py, rendered with the chat template and split by the tokenizer the adapter was
trained with, then greedy decoding.

Prompts are tokenized with `tokenizers` (the adapter's own tokenizer.json), not the engine's tokenizer,
so the token ids are exactly those the PyTorch titler feeds its model; the engine only runs the network.
A batch of chapters is decoded together (batch.py, onnx_decoder.py: one cache per chapter, one forward
pass per decoding step for all of them). `LLMTitler.titles` (the deadline checks between batches, the ""
for chapters left untitled) is inherited, so every runtime titles the same chapters the same way.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from chaptering.prompt import kept_title, title_settled
from chaptering.titles import BATCH_SIZE, MAX_TITLE_TOKENS, LLMTitler, title_messages


def render_chat(template: str, messages: Sequence[Mapping[str, str]], specials: Mapping[str, str]) -> str:
    """The chat template rendered as transformers' apply_chat_template does (sandboxed Jinja with
    trim_blocks, lstrip_blocks and loop controls; special tokens as variables), generation prompt on."""
    return _compiled(template).render(messages=list(messages), add_generation_prompt=True, **specials)


@functools.lru_cache(maxsize=4)
def _compiled(template: str) -> Any:
    """The template compiled once: compiling it took ~5 ms a title prompt (45 ms of a 10-minute answer)."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


_PARAMS_LOCK = threading.Lock()


def load_llama(gguf: Path, n_ctx: int, threads: int, extra_buffers: bool = False) -> Any:
    """A llama.cpp model on plain CPU buffers unless `extra_buffers`.

    llama.cpp's extra CPU buffer types (AMX tiles, repacked weights) crashed decoding on this project's
    CPU with an earlier build (SIGSEGV in llama_decode for every quantised type); a wheel compiled on
    the machine itself runs them, but titles no faster (docs/edge.md, 2026-12-06), so plain buffers stay
    the default. llama-cpp-python has no argument for `use_extra_bufts`, so the default model params are
    wrapped while the model loads.
    """
    import llama_cpp.llama as high
    from llama_cpp import Llama

    if extra_buffers:
        return Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                     verbose=False)
    with _PARAMS_LOCK:
        default = high.llama_cpp.llama_model_default_params

        def plain() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        high.llama_cpp.llama_model_default_params = plain
        try:
            return Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        finally:
            high.llama_cpp.llama_model_default_params = default


class EdgeTitler(LLMTitler):
    """`LLMTitler` on an exported LM: the manifest's chat template, the adapter's tokenizer.json, and a
    `decoder` (set by the subclass) whose `generate(prompt ids, max_new, stop ids)` writes the titles.
    `model` stays None: the service's deadline wrapper patches a PyTorch `generate`, which this titler has
    not; it checks `should_stop` between batches instead."""

    decoder: Any

    def __init__(self, tokenizer: Path, llm: Mapping[str, Any], threads: int | None,
                 max_new_tokens: int, batch_size: int) -> None:
        import os

        from tokenizers import Tokenizer

        super().__init__(None, Tokenizer.from_file(str(tokenizer)), max_new_tokens=max_new_tokens,
                         batch_size=batch_size)
        self.template, self.specials = str(llm["chat_template"]), dict(llm.get("special_tokens", {}))
        self.stop_ids = {int(i) for i in llm["stop_ids"]}
        self.threads = threads or os.cpu_count() or 1

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of one chapter's title prompt, as the PyTorch titler builds them."""
        prompt = render_chat(self.template, title_messages(text)[:2], self.specials)
        return list(self.tok.encode(prompt, add_special_tokens=False).ids)

    def settled(self, ids: list[int]) -> bool:
        """The answer so far already fixes its title (prompt.title_settled): its row stops decoding."""
        return title_settled(self.tok.decode(ids, skip_special_tokens=True))

    def _batch(self, texts: Sequence[str]) -> list[str]:
        answers = self.decoder.generate([self.prompt_ids(x) for x in texts], self.max_new_tokens, self.stop_ids,
                                        self.settled)
        return [kept_title(self.tok.decode(out, skip_special_tokens=True)) for out in answers]


class OnnxTitler(EdgeTitler):
    """Titles from the int8 ONNX graph on onnxruntime (export/onnx_llm.py), `batch_size` chapters a pass:
    16, as the PyTorch titler; a 10-minute talk's 9 chapters took 1.30 s in one pass against 1.59 s in
    passes of 8 and 1 (a pass costs about as much decoding whatever its rows)."""

    def __init__(self, graph: Path, tokenizer: Path, llm: Mapping[str, Any], threads: int | None = None,
                 max_new_tokens: int = MAX_TITLE_TOKENS, batch_size: int = BATCH_SIZE) -> None:
        from chaptering.edge.onnx_decoder import OnnxDecoder

        super().__init__(tokenizer, llm, threads, max_new_tokens, batch_size)
        self.decoder = OnnxDecoder(graph, int(llm["onnx"]["head_dim"]), self.threads, n_seq=batch_size)

    def resize(self, batch_size: int) -> None:
        self.batch_size = self.decoder.n_seq = batch_size


class GGUFTitler(EdgeTitler):
    """Titles from a GGUF on llama.cpp. `llm` (the high-level `Llama`) holds the weights and serves
    one-prompt callers; titles are written by a `BatchDecoder` on the same weights, `batch_size` chapters
    per pass."""

    def __init__(self, gguf: Path, tokenizer: Path, llm: Mapping[str, Any], threads: int | None = None,
                 max_new_tokens: int = MAX_TITLE_TOKENS, n_ctx: int = 512, batch_size: int = 8,
                 cells_per_title: int = 200) -> None:
        super().__init__(tokenizer, llm, threads, max_new_tokens, batch_size)
        self.n_ctx, self.cells_per_title = n_ctx, cells_per_title
        self.llm = load_llama(gguf, n_ctx=n_ctx, threads=self.threads)
        self.decoder = self._decoder(batch_size)

    def _decoder(self, batch_size: int) -> Any:
        from chaptering.edge.batch import BatchDecoder

        # Cells for a batch of typical prompts (~150-200 tokens: the opening 600 characters and the
        # template), and never fewer than one prompt of the single-prompt context.
        return BatchDecoder(self.llm, n_seq=batch_size, n_ctx=max(self.n_ctx, batch_size * self.cells_per_title),
                            threads=self.threads)

    def resize(self, batch_size: int) -> None:
        """Titles `batch_size` chapters per pass from now on (a new batch decoder on the same weights)."""
        self.decoder.close()
        self.batch_size, self.decoder = batch_size, self._decoder(batch_size)
