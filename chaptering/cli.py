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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
