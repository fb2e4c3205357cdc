import itertools
import json
import re

import pytest
from factories import make_transcript
from typer.testing import CliRunner

from chaptering.cli import app
from chaptering.factory import load_chapterer
from chaptering.models import inference_device, load_model
from chaptering.predict import LLMChapterer


class ScriptedChapterer(LLMChapterer):
    """The real windowing, with a 'model' that puts a chapter every 7 lines of whatever it is shown."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.windows: list[tuple[int, int]] = []

    def generate(self, msgs, n_lines=None):
        lines = re.findall(r"\[(\d+)\]$", msgs[-1]["content"], re.MULTILINE)
        n = len(lines)
        self.windows.append(n)
        return json.dumps([{"start": s, "title": f"part {s}"} for s in range(0, n, 7)]), 5


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


def test_windows_cover_every_segment_of_a_long_transcript(tiny):
    model, tok = tiny
    t = make_transcript(600, (0, 100, 300))
    ch = ScriptedChapterer(model, tok, "scripted", context_tokens=400, max_new_tokens=50)
    p = ch.predict(t)
    assert p.meta["windows"] > 5 and sum(ch.windows) >= 600
    starts = p.boundaries
    assert starts[0] == 0 and all(b > a for a, b in itertools.pairwise(starts)) and starts[-1] < 600
    # chapters keep coming until the end: the last one lies in the final window
    assert starts[-1] > 600 - max(ch.windows)
    assert all(c.start == t.segments[c.start_segment].start for c in p.chapters)


def test_no_window_is_walked_after_the_deadline(tiny):
    """Serving drops a late answer anyway: past the deadline the chapterer stops walking windows (it
    went on through every window of a 3,000-line transcript, one prompt rendering each)."""
    model, tok = tiny
    t = make_transcript(600, (0, 100, 300))
    ch = ScriptedChapterer(model, tok, "scripted", context_tokens=400, max_new_tokens=50)
    ch.should_stop = lambda: len(ch.windows) >= 2
    p = ch.predict(t)
    assert ch.windows and len(ch.windows) == 2 and p.meta["windows"] == 2


def test_next_window_starts_at_last_chapter(tiny):
    model, tok = tiny
    t = make_transcript(200, (0, 100))
    ch = ScriptedChapterer(model, tok, "scripted", context_tokens=400, max_new_tokens=50)
    p = ch.predict(t)
    first = ch.windows[0]
    last_in_first = (first - 1) // 7 * 7
    # the chapter at `last_in_first` was re-predicted by the next window, not duplicated
    assert p.boundaries.count(last_in_first) == 1


def test_tiny_model_end_to_end(tiny):
    model, tok = tiny
    t = make_transcript(40, (0, 20))
    p = LLMChapterer(model, tok, "tiny", context_tokens=512, max_new_tokens=16).predict(t)
    assert p.chapters[0].start_segment == 0
    assert p.meta["health"] in ("clean", "repaired", "unusable") and p.meta["generated_tokens"] > 0


def test_load_chapterer_rejects_unknown_spec(settings):
    with pytest.raises(ValueError, match="expected base, champion"):
        load_chapterer("/no/such/model", settings)


def test_cli_predict_on_vtt(tmp_path, tiny_dir, monkeypatch):
    vtt = tmp_path / "talk.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHello and welcome.\n\n"
                   "00:00:02.000 --> 00:00:05.000\nToday we cook pasta.\n")
    out = tmp_path / "pred.jsonl"
    res = CliRunner().invoke(app, ["predict", str(vtt), "--out", str(out), "--model", str(tiny_dir),
                                   "--set", f"state_dir={tmp_path / 'state'}", "--set", "model.max_new_tokens=8"])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    assert row["id"] == "talk" and row["chapters"][0]["start_segment"] == 0 and row["model"] == str(tiny_dir)


def test_cli_predict_bad_input_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "segments": [{"text": "x"}]}\n{"id": "b", \n')
    res = CliRunner().invoke(app, ["predict", str(bad), "--out", str(tmp_path / "o.jsonl"), "--model", "baseline:single"])
    assert res.exit_code == 2
    assert "bad.jsonl" in res.output and "line 2" in res.output


def test_one_settings_to_options_path_for_cli_and_registered_versions(tmp_path):
    """The CLI (a ModelSettings dump) and a version's model_config go through llm_options; versions
    logged before `decoding` existed keep decoding as they did."""
    import json

    from chaptering.config import ModelSettings
    from chaptering.predict import llm_options

    opts = llm_options(ModelSettings().model_dump())
    assert opts["decoding"] == ModelSettings().decoding and opts["start_threshold"] == 0.5
    assert llm_options({})["decoding"] == "free" and llm_options({"structured_decoding": True})["decoding"] == "tagged"
    (tmp_path / "decoding.json").write_text(json.dumps({"start_threshold": 0.37}))
    assert llm_options({}, tmp_path)["start_threshold"] == 0.37
    assert llm_options({"start_threshold": 0.2}, tmp_path)["start_threshold"] == 0.2


def test_model_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert inference_device("auto") == "cpu" and inference_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA"):
        inference_device("cuda")
