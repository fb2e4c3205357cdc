"""Small transcripts for tests."""

import itertools
import json
from pathlib import Path

from chaptering.config import PROJECT_ROOT, DataSettings, GateSettings, ModelSettings, Settings, TrainSettings
from chaptering.evaluate import Report, report_from_rows
from chaptering.io import read_transcripts, write_jsonl
from chaptering.schema import Chapter, Segment, Transcript


def lora_b(adapter: Path) -> dict:
    """An adapter folder's LoRA B matrices: they start at zero, so any change is learned."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k}


def make_transcript(n: int = 30, chapters: tuple[int, ...] = (0, 10, 20), tid: str = "t1", timed: bool = True) -> Transcript:
    return Transcript(
        id=tid,
        segments=[
            Segment(text=f"sentence number {i} about topic {i // 10}", start=2.0 * i if timed else None,
                    end=2.0 * i + 1.9 if timed else None)
            for i in range(n)
        ],
        chapters=[Chapter(title=f"Topic {k}", start_segment=s) for k, s in enumerate(chapters)],
    )


def _raw_lines(path: Path):
    with path.open(encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def small_project(tmp_path: Path, tiny_dir: Path) -> Settings:
    """Eight real training videos, three real held-out videos, two optimizer steps."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    train = itertools.islice(_raw_lines(PROJECT_ROOT / "data" / "train" / "vidchapters-short.jsonl"), 8)
    write_jsonl(inputs / "videos.jsonl", train)
    heldout = [t for t in read_transcripts(PROJECT_ROOT / "data" / "eval" / "heldout.jsonl")
               if t.source.startswith("vidchapters")][:3]
    eval_path = tmp_path / "eval" / "heldout.jsonl"
    write_jsonl(eval_path, (json.loads(t.model_dump_json()) for t in heldout))
    return Settings(
        state_dir=tmp_path / "state",
        model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=24),
        data=DataSettings(inputs=[inputs], internal_dir=tmp_path / "internal", eval_path=eval_path),
        train=TrainSettings(max_steps=2, grad_accum=1, max_length=512, save_steps=100, dpo_steps=1,
                            target_modules=["q_proj", "v_proj"], lora_r=4, lora_alpha=8),
        gate=GateSettings(baselines=["equal", "random"], compare_base=True),  # no sentence encoder needed
    ).prepare()


def scored_report(name: str, f1_by_domain: dict[str, list[float]], fp: str = "evalset-fp", pk: float = 0.4,
                  b: float = 0.3, unusable: float = 0.0) -> Report:
    """A report from synthetic per-transcript primary F1s (ids `<domain>-<i>`, so two reports pair up)."""
    rows = [{"id": f"{d}-{i}", "domain": d, "f1": f, "pk": pk, "boundary_similarity": b, "unusable": unusable}
            for d, values in f1_by_domain.items() for i, f in enumerate(values)]
    return report_from_rows(name, "heldout.jsonl", fp, rows)


def run_once(settings: Settings, fail_at: str | None = None) -> dict:
    """The flow's stage sequence without Prefect (test_deploy covers Prefect itself)."""
    from chaptering import pipeline  # here, so tests that only build transcripts need no MLflow or Prefect

    run_dir = pipeline.new_run_dir(settings)
    ingested = pipeline.ingest_stage(settings, run_dir)
    curated = pipeline.curate_stage(settings, run_dir)
    build = pipeline.dataset_stage(settings, run_dir)
    outcome = pipeline.train_stage(settings, build, run_dir)
    if fail_at == "evaluate":
        raise RuntimeError("simulated evaluation failure")
    evals = pipeline.evaluate_stage(settings, outcome, run_dir)
    decision = pipeline.register_stage(settings, outcome, evals, build)
    committed = pipeline.commit_stage(settings, run_dir)
    summary = pipeline.summarize(ingested, curated, build, outcome, evals, decision, committed)
    return {"ingested": ingested, "curated": curated, "build": build, "outcome": outcome, "decision": decision,
            "summary": summary}
