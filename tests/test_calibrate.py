import json
import shutil

import pytest
from factories import make_transcript

from chaptering import calibrate, prompt
from chaptering.factory import load_chapterer
from chaptering.models import load_model


def test_best_threshold_separates_starts_from_the_rest():
    scores = [(0.9, True), (0.3, True), (0.25, False), (0.1, False), (0.05, False), (0.02, False)]
    t, f1 = calibrate.best_threshold(scores)
    assert 0.25 < t <= 0.3 and f1 == 1.0
    assert calibrate.best_threshold(scores, [0.5])[1] == pytest.approx(2 / 3)  # greedy misses the 0.3 start


def _rows(n_windows: int):
    from datasets import Dataset

    rows = []
    for k in range(n_windows):
        t = make_transcript(10, (0, 3 + k % 4))
        rows.append({"prompt": prompt.messages(prompt.window_lines(t, 0, 10)),
                     "completion": [{"role": "assistant",
                                     "content": prompt.render_answer(prompt.window_chapters(t, 0, 10), 10)}]})
    return Dataset.from_list(rows)


def test_tag_scores_cover_every_line_after_the_first(tiny_dir):
    model, tok = load_model(str(tiny_dir))
    scores = calibrate.tag_scores(model, tok, _rows(3))
    assert len(scores) == 3 * 9 and sum(y for _, y in scores) == 3
    assert all(0.0 <= p <= 1.0 for p, _ in scores)


def test_calibrated_threshold_is_written_and_used(adapter_dir, settings, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    model, tok = load_model(str(settings.model.base), adapter=adapter)
    info = calibrate.calibrate(adapter, model, tok, _rows(4))
    assert set(info) >= {"start_threshold", "val_line_f1", "val_windows"} and info["val_windows"] == 4
    assert json.loads((adapter / calibrate.FILE).read_text()) == info
    assert load_chapterer(str(adapter), settings).start_threshold == info["start_threshold"]
    settings.model.start_threshold = 0.77  # an explicit setting wins over the calibrated value
    assert load_chapterer(str(adapter), settings).start_threshold == 0.77
    assert calibrate.calibrate(adapter, model, tok, None) == {}
