"""The export runtime's title LM loading in the background (edge/runtime.PendingTitler): the stand-in
forwards to the loaded titler, waits for it, and raises what the load raised at the first use."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from chaptering.edge.runtime import PendingTitler


class _Titler:
    def __init__(self, gate: threading.Event) -> None:
        gate.wait(5)
        self.should_stop = None
        self.batch_size = 16

    def titles(self, t: object, starts: list[int]) -> tuple[list[str], int]:
        return [f"title {s}" for s in starts], len(starts)


def test_pending_titler_waits_for_the_load_and_forwards_reads_and_writes() -> None:
    gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pending = PendingTitler(pool.submit(_Titler, gate))
        assert not pending._future.done()  # still loading: nothing waited for it yet
        gate.set()
        assert pending.titles(None, [0, 7]) == (["title 0", "title 7"], 2)
        pending.should_stop = bool  # the service's deadline check reaches the loaded titler
        loaded = pending.result()
        assert isinstance(loaded, _Titler) and loaded.should_stop is bool and pending.batch_size == 16


def test_a_failed_background_load_raises_at_first_use() -> None:
    def broken() -> None:
        raise FileNotFoundError("title-int8.onnx: no such file")

    with ThreadPoolExecutor(1) as pool:
        pending = PendingTitler(pool.submit(broken))
        with pytest.raises(FileNotFoundError, match="title-int8.onnx"):
            pending.titles(None, [0])
