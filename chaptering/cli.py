"""`chaptering ...`: the command line that outside tools rely on (DESIGN.md, CLI contract).

Heavy libraries are imported inside the commands, so `chaptering --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chapter video transcripts with a fine-tuned LLM.")

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="base | champion | models:/NAME/VER | PATH | baseline:NAME")]


@app.callback()
def _root() -> None:
    """Chapter video transcripts with a fine-tuned LLM (see README.md)."""


def _settings(overrides: list[str] | None):
    from chaptering.config import apply_overrides, get_settings

    settings = get_settings()
    if overrides:
        settings = apply_overrides(settings, overrides)
    return settings.prepare()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def predict(
    input: Annotated[Path, typer.Argument(help="Transcripts: .jsonl, .vtt or .srt")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Prediction JSONL to write")],
    model: ModelOpt = "base",
    set: SetOpt = None,
) -> None:
    """Predict chapters for every transcript in INPUT."""
    from chaptering.io import InputError, read_transcripts, write_jsonl
    from chaptering.predict import load_chapterer, predict_all

    settings = _settings(set)
    try:
        transcripts = read_transcripts(input)
    except (InputError, FileNotFoundError) as e:
        _fail(str(e))
    try:
        chapterer = load_chapterer(model, settings)
    except (ValueError, LookupError) as e:
        _fail(str(e))
    n = write_jsonl(out, predict_all(chapterer, transcripts))
    typer.echo(f"wrote {n} predictions to {out} (model {chapterer.name})", err=True)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled transcripts (JSONL)")] = Path(
        "data/eval/heldout.jsonl"
    ),
    model: Annotated[
        Optional[list[str]], typer.Option("--model", "-m", help="Repeat to compare: base, champion, PATH, baseline:NAME")
    ] = None,
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="More models for one table")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.md/json, plots")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregate report as JSON")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N transcripts (smoke runs)")] = None,
    set: SetOpt = None,
) -> None:
    """Score one or more models on a labelled set (F1@k, Pk, WindowDiff, B, titles, output health)."""
    import json

    from chaptering.evaluate import evaluate as run_eval
    from chaptering.evaluate import markdown_table, plot_compare, write_report
    from chaptering.io import InputError, read_transcripts
    from chaptering.predict import load_chapterer

    settings = _settings(set)
    specs = (model or []) + (compare or []) or ["base"]
    try:
        transcripts = read_transcripts(data)[:limit]
    except (InputError, FileNotFoundError) as e:
        _fail(str(e))
    reports = []
    for spec in specs:
        try:
            chapterer = load_chapterer(spec, settings)
            report, predictions = run_eval(chapterer, transcripts, data_name=str(data))
        except (ValueError, LookupError) as e:
            _fail(str(e))
        reports.append(report)
        if out is not None:
            sub = out if len(specs) == 1 else out / spec.replace(":", "-").replace("/", "_")
            write_report(report, predictions, transcripts, sub)
    if out is not None and len(reports) > 1:
        plot_compare(reports, out / "compare.png")
        (out / "compare.md").write_text(markdown_table(reports) + "\n")
    if as_json:
        typer.echo(json.dumps([{"model": r.model, "data": r.data, "fingerprint": r.data_fingerprint,
                                "aggregate": r.aggregate} for r in reports], indent=2))
    else:
        typer.echo(markdown_table(reports))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
