"""`chaptering ...`: the command line that outside tools rely on (the CLI contract: README.md, "Use it").

Heavy libraries are imported inside the commands, so `chaptering --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Chapter video transcripts: boundary model + fine-tuned LLM titles.")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a setting: section.key=value")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="base | champion | models:/NAME/VER | PATH | "
                                       "baseline:NAME | export:DIR[@QUANT]")]


@app.callback()
def _root(
    config: Annotated[Path | None, typer.Option("--config", help="Settings file, e.g. configs/llm-chapterer.yaml")] = None,
) -> None:
    """Chapter video transcripts: a boundary model places chapters, a fine-tuned LLM titles them (README.md)."""
    if config is not None:
        from chaptering.config import use_config_file

        try:
            use_config_file(config)
        except FileNotFoundError as err:
            _fail(str(err))


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
    from chaptering.factory import load_chapterer
    from chaptering.io import InputError, read_transcripts, write_jsonl
    from chaptering.predict import predict_all

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
        list[str] | None, typer.Option("--model", "-m", help="Repeat to compare: base, champion, PATH, baseline:NAME")
    ] = None,
    compare: Annotated[list[str] | None, typer.Option("--compare", help="More models for one table")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.md/json, plots")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregate report as JSON")] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N transcripts (smoke runs)")] = None,
    set: SetOpt = None,
) -> None:
    """Score models on a labelled set: the headline (macro F1 over domains) and every metric per domain."""
    import json

    from chaptering.evaluate import evaluate as run_eval
    from chaptering.evaluate import full_markdown, plot_compare, write_report
    from chaptering.factory import load_chapterer
    from chaptering.io import InputError, read_transcripts

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
        (out / "compare.md").write_text(full_markdown(reports) + "\n")
    if as_json:
        typer.echo(json.dumps([{"model": r.model, "data": r.data, "fingerprint": r.data_fingerprint,
                                "headline": r.headline, "domains": r.domains, "aggregate": r.aggregate}
                               for r in reports], indent=2))
    else:
        typer.echo(full_markdown(reports))


data_app = typer.Typer(no_args_is_help=True, help="Build training data without Prefect.")
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for datasets, stats and quarantine")],
    input: Annotated[list[Path] | None, typer.Option("--input", "-i", help="Folders/files of transcripts")] = None,
    set: SetOpt = None,
) -> None:
    """Ingest, curate, augment and build the SFT/DPO/KTO datasets (the flow's data stages, no Prefect)."""
    import json

    from chaptering import pipeline

    settings = _settings(set)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quarantine.jsonl").unlink(missing_ok=True)
    ingested = pipeline.ingest_stage(settings, out, input or None, full=True)
    curated = pipeline.curate_stage(settings, out, standalone=True)
    build = pipeline.dataset_stage(settings, out, standalone=True)
    stats = {"ingest": ingested, "curate": curated, "datasets": str(build.dir), "fingerprint": build.fingerprint,
             "fingerprints": build.fingerprints, "reused": build.reused, **build.stats}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    typer.echo(json.dumps({k: stats[k] for k in ("ingest", "curate", "datasets", "fingerprint", "reused")}, indent=2))


@app.command()
def retrain(
    force: Annotated[bool, typer.Option(help="Train even if the data has not changed")] = False,
    max_steps: Annotated[int | None, typer.Option(help="SFT optimizer steps")] = None,
    base_model: Annotated[str | None, typer.Option(help="embedded, a hub id or a local folder")] = None,
    input: Annotated[list[Path] | None, typer.Option("--input", "-i", help="Extra transcript folders")] = None,
    set: SetOpt = None,
) -> None:
    """Run the nightly flow once, end to end (Prefect ephemeral API unless PREFECT_API_URL is set)."""
    _settings(set)  # validates overrides and points PREFECT_HOME at the state folder before Prefect loads
    from flows.nightly import nightly_retrain

    result = nightly_retrain(base_model=base_model, max_steps=max_steps, force=force,
                             inputs=[str(p) for p in input] if input else None, overrides=set or None)
    typer.echo((Path(result["run_dir"]) / "summary.md").read_text())  # plain: the table stays a table
    typer.echo(f"run folder: {result['run_dir']}")


@app.command()
def models(set: SetOpt = None) -> None:
    """Registered versions with their metrics and decisions, side by side."""
    from rich.console import Console
    from rich.table import Table

    from chaptering import registry
    from chaptering.evaluate import DOMAIN_ORDER

    settings = _settings(set)
    rows = registry.list_versions(settings)
    if not rows:
        typer.echo("no registered versions yet: run `chaptering retrain`")
        return
    table = Table(title=f"registered model {settings.registered_model!r}")
    domains = [d for d in DOMAIN_ORDER if any(f"{d}_f1" in r.get("metrics", {}) for r in rows)]
    keys = ["headline", *(f"{d}_f1" for d in domains), "unusable"]
    for col in ("version", "aliases", "created", "decision", "headline", *(f"{d} F1" for d in domains), "unusable"):
        table.add_column(col)
    for r in rows:
        m = r.get("metrics", {})
        table.add_row(str(r["version"]), ",".join(r.get("aliases", [])), str(r.get("created", ""))[:19],
                      str(r.get("decision", "")), *(f"{m[k]:.3f}" if k in m else "–" for k in keys))
    Console().print(table)


@app.command()
def promote(version: str, set: SetOpt = None) -> None:
    """Move the `champion` alias to VERSION (a manual override of the gate, recorded on the version)."""
    from chaptering import registry

    settings = _settings(set)
    try:
        registry.promote(version, settings, reason="manual promotion from the CLI")
    except (LookupError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"champion -> version {version}")


@app.command()
def export(
    version: Annotated[str, typer.Argument(help="VERSION number | champion | models:/NAME/VER | bundle folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (replaced if it is an export)")],
    quant: Annotated[list[str] | None, typer.Option(
        "--quant", "-q", help="title LM quantisation, repeat for several (first = default): GGUF q8_0, "
                              "q4_k_m, f16, ... or int8 (ONNX on onnxruntime, the fastest on x86)")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Log the folder to the version's MLflow run")] = True,
    encoder: Annotated[str, typer.Option(
        "--encoder", help="fp32: the server's chapters exactly; int8: 35 % smaller, ~2x faster encoding, "
                          "as good but not always the same starts")] = "fp32",
    set: SetOpt = None,
) -> None:
    """Export a registered chapterer to files that run without PyTorch (GGUF titles, ONNX encoder, trees)."""
    from chaptering.edge.manifest import total_bytes
    from chaptering.export import export_model

    settings = _settings(set)
    try:
        manifest = export_model(version, out, quant or ["q8_0"], settings, log=log, encoder=encoder)
    except (ValueError, LookupError, FileNotFoundError, FileExistsError) as e:
        _fail(str(e))
    typer.echo(f"exported {manifest['source']['model']} to {out} ({total_bytes(manifest) / 1e6:.0f} MB); run it with "
               f"--model export:{out} or python -m chaptering.edge {out} INPUT")


@app.command()
def rollback(set: SetOpt = None) -> None:
    """Move `champion` back to the previous champion."""
    from chaptering import registry

    settings = _settings(set)
    try:
        version = registry.rollback(settings)
    except (LookupError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"champion -> version {version}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port)")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="champion (follows the alias) | base | "
                                       "models:/NAME/VER | PATH | baseline:NAME (pinned)")] = "champion",
    set: SetOpt = None,
) -> None:
    """Serve /v1/chapters, /v1/feedback, /v1/model and /healthz (FastAPI on uvicorn, with the serve.*
    header timeout, keep-alive timeout and connection cap)."""
    import logging

    from chaptering import serve as serving

    settings = _settings(set)
    if settings.serve.require_token and not settings.serve.token:  # create_app refuses too; say it plainly
        _fail("serve.require_token is set but serve.token is empty: set CHAPTERING_SERVE__TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    serving.run_server(settings, host=host, port=port, model_spec=model)


stack_app = typer.Typer(no_args_is_help=True, help="The local production stack: PostgreSQL, MLflow, Prefect, "
                        "a worker and the service on loopback (logs and pids under state/stack/).")
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(set: SetOpt = None) -> None:
    """Start what is not running yet (PostgreSQL databases, MLflow server, Prefect server + deployments,
    a worker on chaptering-pool, the service) and print where each answers."""
    from chaptering import stack

    settings = _settings(set)
    try:
        where = stack.up(settings, echo=typer.echo)
    except (RuntimeError, FileNotFoundError) as e:
        _fail(f"{e}\n(what did start is recorded; `chaptering stack down` stops it)")
    typer.echo(f"\nMLflow UI      {where.mlflow}\nPrefect UI     {where.prefect}\n"
               f"service        {where.serve}/v1/chapters\n"
               f"in a shell:    source {stack.stack_dir(settings) / 'env.sh'}   (then chaptering models, "
               "prefect deployment run ...)")


@stack_app.command("down")
def stack_down(set: SetOpt = None) -> None:
    """Stop what `stack up` started, the service first; data (registry, feedback, runs) is kept."""
    from chaptering import stack

    stack.down(_settings(set), echo=typer.echo)


@stack_app.command("status")
def stack_status(set: SetOpt = None) -> None:
    """Whether each part answers its health URL; exits 1 if one does not."""
    from chaptering import stack

    settings = _settings(set)
    states = stack.status(settings)
    for name, ok in states.items():
        typer.echo(f"{name:8} {'up' if ok else 'DOWN'}  {stack.urls(settings).health(name)}")
    if not all(states.values()):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
