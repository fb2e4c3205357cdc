"""Greedy continuations of several prompts on an ONNX causal LM (onnxruntime, CPU), one KV cache per prompt.

The graph is onnxruntime-genai's Llama layout (export/onnx_llm.py): inputs `input_ids`, `attention_mask`
and `past_key_values.N.key/value`, outputs `logits` (last position only) and `present.N.key/value`, with
GroupQueryAttention reading each row's length from its attention mask. So prompts of different lengths
decode together: each prompt is prefilled alone (no padding to compute) and its cache copied into its row
of right-padded buffers, then every decoding step runs all unfinished titles in one pass, each row's mask
telling the attention where its own cache ends. The system and instruction tokens every title prompt starts with are
prefilled once and their cache reused by every prompt, as batch.py does on llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
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
        # Pool threads spin between the ~450 kernels of a pass instead of sleeping and waking: titles are
        # an answer's last step, so nothing else wants the cores then (17 titles: 1.80 -> 1.59 s on the
        # 2-core Xeon, 2026-12-08). The encoder's pool does not spin (encoder.py): the titles follow it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        past = next(i for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.kv_heads, self.head_dim = int(past.shape[1]), head_dim
        self.cache_dtype = "float16" if past.type == "tensor(float16)" else "float32"  # int8 exports: fp16
        self.n_seq = n_seq
        self._lock = threading.Lock()  # numpy caches are per call, but one call at a time keeps cores free

    def generate(self, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int],
                 settled: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """For each prompt, the greedy tokens up to (not including) a stop token, at most `max_new`;
        a row also ends once `settled(its tokens)` says no later token can change what is kept of it."""
        out: list[list[int]] = []
        with self._lock:
            for at in range(0, len(prompts), self.n_seq):
                out += self._generate(prompts[at:at + self.n_seq], max_new, stop, settled)
        return out

    def _run(self, ids: Any, mask: Any, past: list[Any]) -> tuple[Any, list[Any]]:
        """One forward pass -> (last-position logits [B, V], present caches)."""
        feeds = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.past_names, past))}
        out = self.session.run(["logits", *self.present_names], feeds)
        return out[0][:, -1, :], out[1:]

    def _empty(self, rows: int) -> list[Any]:
        import numpy as np

        return [np.zeros((rows, self.kv_heads, 0, self.head_dim), self.cache_dtype) for _ in self.past_names]

    def _prefill(self, ids: Sequence[int], past: list[Any]) -> tuple[int, list[Any]]:
        import numpy as np

        total = past[0].shape[2] + len(ids)
        logits, present = self._run(np.array([ids], np.int64), np.ones((1, total), np.int64), past)
        return int(logits[0].argmax()), present

    def _generate(self, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int],
                  settled: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """Prefill each prompt alone and copy its cache straight into its row of the batch buffers (holding
        every prompt's cache at once first cost ~9 MB a SmolLM2 prompt on top of the buffers), then decode
        the rows together."""
        import numpy as np

        shared = common_prefix(prompts) if len(prompts) > 1 else 0
        prefix = self._prefill(prompts[0][:shared], self._empty(1))[1] if shared else self._empty(1)
        width = max(len(p) for p in prompts) + max_new
        buffers = [np.zeros((len(prompts), self.kv_heads, width, self.head_dim), self.cache_dtype)
                   for _ in self.past_names]
        answers: list[list[int]] = [[] for _ in prompts]
        for row, p in enumerate(prompts):
            token, cache = self._prefill(p[shared:], prefix)
            for buf, layer in zip(buffers, cache):
                buf[row, :, :len(p)] = layer[0]
            if token not in stop:
                answers[row].append(token)
        going = [row for row, a in enumerate(answers)
                 if a and len(a) < max_new and not (settled is not None and settled(a))]
        if going:
            self._decode(buffers, [len(p) for p in prompts], going, answers, max_new, stop, settled)
        return answers

    def _decode(self, buffers: list[Any], lengths: list[int], going: list[int], answers: list[list[int]],
                max_new: int, stop: set[int], settled: Callable[[list[int]], bool] | None) -> None:
        """Decode the rows in `going` until each stops. The graph reads the buffers as past and writes them
        as present (GroupQueryAttention shares them and writes each row's new entry at that row's length),
        so a step copies no cache. A step costs more the more rows it runs (~12 ms at 1 row, ~32 at
        16), so once at most half of the rows are still going, theirs are copied into buffers of that size
        and the finished ones leave the batch (a pass of 16 titles often ends with one or two long ones).
        The int8 graph quantises each step's activations with one scale for all its rows, so which rows
        share a step moves a title now and then: 9 of 208 held-out titles changed with compaction, and
        their agreement with PyTorch's did not (ROUGE-L 0.814 vs 0.817; docs/edge.md, 2026-12-08)."""
        import numpy as np

        rows = list(going)  # batch position -> answer row
        if len(rows) < len(answers):
            _keep_rows(buffers, rows)
        lengths = [lengths[r] for r in rows]
        binding = self._bind(buffers)
        while True:
            live = [k for k, row in enumerate(rows) if row in going]
            if not live:
                return
            if len(live) <= len(rows) // 2:  # compact: keep only the rows still going
                binding = None  # its OrtValues hold the buffers about to be replaced
                _keep_rows(buffers, live)
                rows, lengths = [rows[k] for k in live], [lengths[k] for k in live]
                binding = self._bind(buffers)
            mask = np.zeros((len(rows), max(lengths) + 1), np.int64)
            for k in range(len(rows)):
                mask[k, :lengths[k] + 1] = 1
            binding.bind_cpu_input("input_ids", np.array([[answers[row][-1]] for row in rows], np.int64))
            binding.bind_cpu_input("attention_mask", mask)
            self.session.run_with_iobinding(binding)
            logits = binding.get_outputs()[0].numpy()[:, -1, :]
            for k, row in enumerate(rows):
                if row not in going:
                    continue
                lengths[k] += 1
                token = int(logits[k].argmax())
                if token in stop:
                    going.remove(row)
                    continue
                answers[row].append(token)
                if len(answers[row]) >= max_new or (settled is not None and settled(answers[row])):
                    going.remove(row)

    def _bind(self, buffers: list[Any]) -> Any:
        """An IO binding whose past and present are the same `buffers` (the cache is written in place)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_output("logits")  # first bound: get_outputs()[0]
        for past, present, buf in zip(self.past_names, self.present_names, buffers):
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        return binding


def _keep_rows(buffers: list[Any], rows: list[int]) -> None:
    """Replace each cache buffer, in place in the list, by a copy of its `rows`: one layer at a time, so
    the full buffers are freed as their copies are made (the caller's list holds no other reference)."""
    for i, buf in enumerate(buffers):
        buffers[i] = buf[rows]
