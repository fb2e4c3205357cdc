"""Greedy continuations of several prompts on an ONNX causal LM (onnxruntime, CPU), one KV cache per prompt.

The graph is onnxruntime-genai's Llama layout (export/onnx_llm.py): inputs `input_ids`, `attention_mask`
and `past_key_values.N.key/value`, outputs `logits` (last position only) and `present.N.key/value`, with
GroupQueryAttention reading each row's length from its attention mask. So prompts of different lengths
decode together: each prompt is prefilled alone (no padding to compute), then their caches are stacked,
right-padded, and every decoding step runs all unfinished titles in one pass, each row's mask telling the
attention where its own cache ends. The system and instruction tokens every title prompt starts with are
prefilled once and their cache reused by every prompt, as batch.py does on llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaptering.edge.batch import common_prefix


class OnnxDecoder:
    """Up to `n_seq` prompts decoded together on one onnxruntime session."""

    def __init__(self, path: Path, head_dim: int, threads: int | None = None, n_seq: int = 8) -> None:
        """`head_dim`: the graph leaves it symbolic (`kv_cache_dim`), so the export records it."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        shape = next(i.shape for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.kv_heads, self.head_dim = int(shape[1]), head_dim
        self.n_seq = n_seq
        self._lock = threading.Lock()  # numpy caches are per call, but one call at a time keeps cores free

    def generate(self, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int]) -> list[list[int]]:
        """For each prompt, the greedy tokens up to (not including) a stop token, at most `max_new`."""
        out: list[list[int]] = []
        with self._lock:
            for at in range(0, len(prompts), self.n_seq):
                out += self._generate(prompts[at:at + self.n_seq], max_new, stop)
        return out

    def _run(self, ids: Any, mask: Any, past: list[Any]) -> tuple[Any, list[Any]]:
        """One forward pass -> (last-position logits [B, V], present caches)."""
        feeds = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.past_names, past))}
        out = self.session.run(["logits", *self.present_names], feeds)
        return out[0][:, -1, :], out[1:]

    def _empty(self, rows: int) -> list[Any]:
        import numpy as np

        return [np.zeros((rows, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past_names]

    def _prefill(self, ids: Sequence[int], past: list[Any]) -> tuple[int, list[Any]]:
        import numpy as np

        total = past[0].shape[2] + len(ids)
        logits, present = self._run(np.array([ids], np.int64), np.ones((1, total), np.int64), past)
        return int(logits[0].argmax()), present

    def _generate(self, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int]) -> list[list[int]]:
        shared = common_prefix(prompts) if len(prompts) > 1 else 0
        prefix = self._prefill(prompts[0][:shared], self._empty(1))[1] if shared else self._empty(1)
        following, caches = [], []
        for p in prompts:
            token, cache = self._prefill(p[shared:], prefix)
            following.append(token)
            caches.append(cache)
        answers: list[list[int]] = [[] for _ in prompts]
        active = [s for s in range(len(prompts)) if following[s] not in stop]
        for s in active:
            answers[s].append(following[s])
        active = [s for s in active if len(answers[s]) < max_new]
        if not active:
            return answers
        return self._decode(active, caches, [len(p) for p in prompts], answers, max_new, stop)

    def _decode(self, rows: list[int], caches: list[list[Any]], lengths: list[int], answers: list[list[int]],
                max_new: int, stop: set[int]) -> list[list[int]]:
        """Decode `rows` together. Their caches are copied once into buffers of the final width that the
        graph reads as past and writes as present (GroupQueryAttention shares them and writes each row's
        new entry at that row's length), so a step copies no cache. A finished row stays in the batch, its
        mask frozen, until every row is done."""
        import numpy as np
        import onnxruntime as ort

        width = max(lengths[s] for s in rows) + max_new
        buffers = []
        for layer in range(len(self.past_names)):
            buf = np.zeros((len(rows), self.kv_heads, width, self.head_dim), np.float32)
            for row, s in enumerate(rows):
                buf[row, :, :lengths[s]] = caches[s][layer][0]
            buffers.append(ort.OrtValue.ortvalue_from_numpy(buf))
        binding = self.session.io_binding()
        binding.bind_output("logits")  # first bound: get_outputs()[0]
        for past, present, buf in zip(self.past_names, self.present_names, buffers):
            binding.bind_ortvalue_input(past, buf)
            binding.bind_ortvalue_output(present, buf)
        going = set(range(len(rows)))
        while going:
            total = max(lengths[s] for s in rows) + 1
            mask = np.zeros((len(rows), total), np.int64)
            for row, s in enumerate(rows):
                mask[row, :lengths[s] + 1] = 1
            binding.bind_cpu_input("input_ids", np.array([[answers[s][-1]] for s in rows], np.int64))
            binding.bind_cpu_input("attention_mask", mask)
            self.session.run_with_iobinding(binding)
            logits = binding.get_outputs()[0].numpy()[:, -1, :]
            for row in sorted(going):
                s = rows[row]
                lengths[s] += 1
                token = int(logits[row].argmax())
                if token in stop:
                    going.discard(row)
                    continue
                answers[s].append(token)
                if len(answers[s]) >= max_new:
                    going.discard(row)
        return answers
