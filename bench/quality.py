"""The README's quality table in one command: `python bench/quality.py [--model EXTRA ...]`.

Floors, TextTiling, embedding valleys, the base model with the seed's prompt and with ours, and the
champion when one exists, all on the held-out set. Greedy decoding and seeded baselines: the same
command gives the same numbers. Each model's report is kept under bench/results/quality/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chaptering.config import get_settings
from chaptering.evaluate import Report, evaluate, fingerprint, markdown_table, plot_compare, result_key, write_report
from chaptering.io import read_transcripts
from chaptering.predict import load_chapterer

DEFAULT = ["baseline:random", "baseline:single", "baseline:equal", "baseline:texttiling",
           "baseline:embedding", "baseline:seed", "base"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", action="append", default=[], help="extra models (champion, PATH, models:/...)")
    ap.add_argument("--only", action="append", default=None, help="run just these models")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality")
    ap.add_argument("--fresh", action="store_true", help="re-run fixed models even if a matching report is stored")
    args = ap.parse_args()
    settings = get_settings().prepare()
    data = args.data or settings.data.eval_path
    transcripts = read_transcripts(data)
    specs = args.only or DEFAULT + args.model
    reports = []
    for spec in specs:
        out = args.out / spec.replace(":", "-").replace("/", "_")
        key = result_key(spec, transcripts, settings)
        stored = out / "report.json"
        # Fixed models (baselines, the base model) give the same numbers for the same key: reuse them.
        if spec in DEFAULT and not args.fresh and stored.is_file() and (out / "key.json").is_file() \
                and (out / "key.json").read_text() == key:
            reports.append(Report.from_json(stored.read_text()))
            print(markdown_table([reports[-1]]).splitlines()[-1] + "  (stored)", flush=True)
            continue
        if spec == "champion" and not args.fresh:  # the report the gate promoted it on, from the registry
            from chaptering.registry import champion_report

            stored_champion = champion_report(settings)
            if stored_champion is not None and stored_champion.data_fingerprint == fingerprint(transcripts):
                reports.append(stored_champion)
                print(markdown_table([reports[-1]]).splitlines()[-1] + "  (registered report)", flush=True)
                continue
        if spec == "base":  # the same cached report the nightly gate compares against
            from chaptering.pipeline import base_report

            reports.append(base_report(settings))
            out.mkdir(parents=True, exist_ok=True)
            stored.write_text(reports[-1].to_json())
            print(markdown_table([reports[-1]]).splitlines()[-1], flush=True)
            continue
        try:
            chapterer = load_chapterer(spec, settings)
        except LookupError as e:  # e.g. no champion yet
            print(f"skip {spec}: {e}")
            continue
        report, predictions = evaluate(chapterer, transcripts, data_name=str(data))
        write_report(report, predictions, transcripts, out)
        (out / "key.json").write_text(key)
        reports.append(report)
        print(markdown_table([report]).splitlines()[-1], flush=True)
    table = markdown_table(reports)
    print(f"\nheld-out: {data} ({len(transcripts)} transcripts, fingerprint {reports[0].data_fingerprint})\n")
    print(table)
    if args.only:  # a partial run: its reports are under out/<model>/; the combined table stays whole
        return
    (args.out / "table.md").write_text(table + "\n")
    plot_compare(reports, args.out / "compare.png")
    (args.out / "summary.json").write_text(json.dumps(
        {r.model: {k: v for k, v in r.aggregate.items()} for r in reports}, indent=2))


if __name__ == "__main__":
    main()
