"""Greedy continuations of several prompts in one llama.cpp context, one sequence each.

Titling chapters one at a time spent 5.7 of the 5.9 s a 10-minute transcript took on the q8_0 export:
21 prompts, each prefilled and then decoded token by token with one row per forward pass. Here every
prompt is a sequence of a unified KV cache: the prefill goes in batches of up to `n_batch` tokens across
prompts, and each decoding step runs all unfinished titles in one forward pass. llama-cpp-python's
`Llama` opens its context with one sequence, so this owns a second context on the same weights.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens all prompts start with, leaving each at least one of its own (its logits are the answer's
    first token)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for k in range(max(0, n)):
        if any(p[k] != first[k] for p in prompts):
            return k
    return max(0, n)


def _free(ctx: Any, batch: Any) -> None:
    import llama_cpp

    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)


class BatchDecoder:
    """Up to `n_seq` prompts at a time, sharing `n_ctx` cells of KV cache (prompt + answer tokens)."""

    def __init__(self, llm: Any, n_seq: int, n_ctx: int, threads: int, n_batch: int = 256) -> None:
        """`llm`: the `llama_cpp.Llama` whose weights this reads; held, so they outlive the context. The
        compute buffer grows with n_ctx x n_batch (attention scores): 1,600 cells and 256-token batches
        hold ~28 MB less than 2,560 and 512, for the same titles (docs/edge.md, Memory)."""
        import llama_cpp

        model = llm.model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_batch, n_ctx)
        params.n_seq_max = n_seq
        params.n_outputs_max = n_seq  # logits rows per ubatch: one per sequence (default n_batch: 100 MB)
        params.kv_unified = True  # one pool of cells for all sequences: prompts differ in length
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not open a context of {n_ctx} tokens and {n_seq} sequences")
        self.n_seq, self.n_ctx, self.n_batch = n_seq, n_ctx, int(params.n_batch)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        self.ctx, self.batch = ctx, llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._llm = llm
        self._lock = threading.Lock()  # one KV cache: one call at a time
        self._finalizer = weakref.finalize(self, _free, ctx, self.batch)

    def close(self) -> None:
        self._finalizer()

    def generate(self, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int],
                 settled: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """For each prompt, the greedy tokens up to (not including) a stop token, at most `max_new`;
        a sequence also ends once `settled(its tokens)` says no later token can change what is kept."""
        out: list[list[int]] = []
        with self._lock:
            for group in self._groups(prompts, max_new):
                out += self._generate([prompts[i] for i in group], max_new, stop, settled)
        return out

    def _groups(self, prompts: Sequence[Sequence[int]], max_new: int) -> list[list[int]]:
        """Consecutive prompts packed into groups that fit the sequences and the cells."""
        groups: list[list[int]] = []
        used = 0
        for i, p in enumerate(prompts):
            need = len(p) + max_new
            if need > self.n_ctx:
                raise ValueError(f"title prompt of {len(p)} tokens does not fit the {self.n_ctx}-token context")
            if not groups or len(groups[-1]) >= self.n_seq or used + need > self.n_ctx:
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += need
        return groups

    def _generate(self, prompts: list[Sequence[int]], max_new: int, stop: set[int],
                  settled: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_clear(memory, True)
        # The system and instruction tokens every title prompt starts with (~40 of ~190) are computed
        # once and shared: sequence 0's cells are marked as every other sequence's too.
        shared = common_prefix(prompts) if len(prompts) > 1 else 0
        if shared:
            for at in range(0, shared, self.n_batch):
                self._run([(prompts[0][j], j, 0, False) for j in range(at, min(shared, at + self.n_batch))])
            for s in range(1, len(prompts)):
                llama_cpp.llama_memory_seq_cp(memory, 0, s, -1, -1)
        following: dict[int, int] = {}  # sequence -> the greedy token after its last one
        queue = [(s, j, p[j]) for s, p in enumerate(prompts) for j in range(shared, len(p))]
        for at in range(0, len(queue), self.n_batch):
            chunk = queue[at:at + self.n_batch]
            self._run([(tok, j, s, j == len(prompts[s]) - 1) for s, j, tok in chunk])
            for k, (s, j, _) in enumerate(chunk):
                if j == len(prompts[s]) - 1:
                    following[s] = self._argmax(k)
        answers: list[list[int]] = [[] for _ in prompts]
        position = [len(p) for p in prompts]
        active = list(range(len(prompts)))
        while active:
            going = []
            for s in active:
                if following[s] in stop:
                    continue
                answers[s].append(following[s])
                if len(answers[s]) < max_new and not (settled is not None and settled(answers[s])):
                    going.append(s)
            if not going:
                break
            self._run([(following[s], position[s], s, True) for s in going])
            for k, s in enumerate(going):
                following[s] = self._argmax(k)
                position[s] += 1
            active = going
        return answers

    def _run(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode over (token, position, sequence, wants logits) rows."""
        import llama_cpp

        b = self.batch
        for k, (token, pos, seq, logits) in enumerate(rows):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = token, pos, 1, int(logits)
            b.seq_id[k][0] = seq
        b.n_tokens = len(rows)
        code = llama_cpp.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} on a batch of {len(rows)} tokens")

    def _argmax(self, row: int) -> int:
        """The greedy token after batch row `row` of the last decode (a row that asked for logits)."""
        import llama_cpp
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        return int(logits.argmax())
