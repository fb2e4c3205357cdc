"""The exported (on-device) chapterer against the PyTorch one it came from: parity and speed (issue 19).

  parity: both on the held-out set (data/eval/heldout.jsonl): per domain, how often the chapter starts
          are identical, primary F1 of each and the difference, and title ROUGE-L between the two on
          chapters that start at the same line. Predictions are kept under bench/results/edge/ (reused
          with --reuse: the PyTorch pass is the slow one).
  speed:  each runtime in a fresh process: load time, cold start (process spawn to the first answer on a
          10-minute transcript), latency on 10- and 60-minute transcripts, peak RSS (VmHWM).

    python bench/edge.py parity --torch models:/chaptering/1 --export /tmp/edge --quants q8_0 q4_k_m f16
    python bench/edge.py speed  --torch models:/chaptering/1 --export /tmp/edge --quants q8_0 q4_k_m f16

The 10- and 60-minute transcripts are the first 10 and 60 minutes of the longest timed held-out talk.
Both write markdown to bench/results/edge-*.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HELDOUT = ROOT / "data" / "eval" / "heldout.jsonl"


# --- parity ----------------------------------------------------------------------------------------


def _predictions(spec: str, transcripts: list[Any], label: str, reuse: bool) -> tuple[Any, list[Any]]:
    """evaluate() of one model, its predictions cached as JSONL under bench/results/edge/."""
    from chaptering.config import get_settings
    from chaptering.evaluate import evaluate as run_eval
    from chaptering.evaluate import fingerprint, report_from_rows
    from chaptering.factory import load_chapterer
    from chaptering.metrics import domain_of, score
    from chaptering.schema import Prediction

    path = RESULTS / "edge" / f"{label}.jsonl"
    if reuse and path.is_file():
        preds = [Prediction.model_validate_json(line) for line in path.read_text().splitlines()]
        if [p.id for p in preds] == [t.id for t in transcripts]:
            rows = [{"id": t.id, "domain": domain_of(t), **score(t, p)} for t, p in zip(transcripts, preds)]
            return report_from_rows(label, str(HELDOUT), fingerprint(transcripts), rows), preds
    chapterer = load_chapterer(spec, get_settings().prepare())
    report, preds = run_eval(chapterer, transcripts, data_name=str(HELDOUT))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.model_dump_json() + "\n" for p in preds))
    return report, preds


def _agreement(transcripts: list[Any], ref: list[Any], hyp: list[Any]) -> dict[str, dict[str, float]]:
    """Per domain (and `all`): identical starts, exact-line F1 of hyp starts vs ref starts, title ROUGE-L
    and exact-title share on chapters starting at the same line."""
    from chaptering.metrics import _rouge, boundary_prf, domain_of

    acc: dict[str, dict[str, list[float]]] = {}
    for t, a, b in zip(transcripts, ref, hyp):
        for d in (domain_of(t), "all"):
            row = acc.setdefault(d, {"same": [], "f1": [], "rouge": [], "title_same": []})
            row["same"].append(float(a.boundaries == b.boundaries))
            row["f1"].append(boundary_prf(a.boundaries, b.boundaries, 0)[2])
            titles = {c.start_segment: c.title for c in a.chapters}
            for c in b.chapters:
                if c.start_segment in titles:
                    row["rouge"].append(_rouge().score(titles[c.start_segment], c.title)["rougeL"].fmeasure)
                    row["title_same"].append(float(titles[c.start_segment] == c.title))
    return {d: {k: (sum(v) / len(v) if v else float("nan")) for k, v in row.items()} | {"n": len(row["same"])}
            for d, row in acc.items()}


def parity(args: argparse.Namespace) -> str:
    from chaptering.evaluate import DOMAIN_ORDER
    from chaptering.heldout import load_heldout

    transcripts = load_heldout(HELDOUT)[: args.limit]
    torch_report, torch_preds = _predictions(args.torch, transcripts, "torch", args.reuse)
    lines = [f"# Edge export parity: `{args.export}` vs `{args.torch}` ({len(transcripts)} held-out transcripts)",
             "", f"PyTorch headline (macro F1): {torch_report.headline['mean']:.4f}", ""]
    domains = [d for d in DOMAIN_ORDER if d in torch_report.domains]
    for q in args.quants:
        report, preds = _predictions(f"export:{args.export}@{q}", transcripts, f"export-{q}", args.reuse)
        agree = _agreement(transcripts, torch_preds, preds)
        diff = report.headline["mean"] - torch_report.headline["mean"]
        lines += [f"## {q}: headline {report.headline['mean']:.4f} (Δ {diff:+.4f} vs PyTorch)", "",
                  ("| domain | n | identical starts | start F1 vs PyTorch | F1 PyTorch | F1 export | Δ F1 "
                  "| title ROUGE-L vs PyTorch | identical titles |"), "|---|---|---|---|---|---|---|---|---|"]
        for d in [*domains, "all"]:
            a = agree[d]
            f_t = torch_report.domains[d]["f1"]["mean"] if d != "all" else torch_report.aggregate["f1"]["mean"]
            f_e = report.domains[d]["f1"]["mean"] if d != "all" else report.aggregate["f1"]["mean"]
            lines.append(f"| {d} | {a['n']} | {a['same']:.1%} | {a['f1']:.3f} | {f_t:.3f} | {f_e:.3f} | "
                         f"{f_e - f_t:+.4f} | {a['rouge']:.3f} | {a['title_same']:.1%} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --- speed -----------------------------------------------------------------------------------------


def _speed_transcripts(out: Path) -> Path:
    """The first 10 and 60 minutes of the longest timed held-out transcript, as a 2-line JSONL."""
    from chaptering.heldout import load_heldout

    timed = [t for t in load_heldout(HELDOUT) if t.has_times]
    longest = max(timed, key=lambda t: float(t.segments[-1].end or t.segments[-1].start or 0.0))
    rows = []
    for minutes in (10, 60):
        segs = [s for s in longest.segments if float(s.start or 0.0) < minutes * 60]
        rows.append(longest.model_copy(update={"id": f"{longest.id}-{minutes}min", "segments": segs, "chapters": []}))
    out.write_text("".join(t.model_dump_json() + "\n" for t in rows))
    return out


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One runtime in this (fresh) process: prints one JSON line of timings."""
    from chaptering.config import get_settings
    from chaptering.factory import load_chapterer
    from chaptering.schema import Transcript

    ten, sixty = [Transcript.model_validate_json(line) for line in Path(args.transcripts).read_text().splitlines()]
    t0 = time.perf_counter()
    chapterer = load_chapterer(args.spec, get_settings().prepare())
    load = time.perf_counter() - t0
    p = chapterer.predict(ten)
    first = time.perf_counter() - t0
    cold = time.time() - args.spawned
    lat10 = [first - load]
    for _ in range(args.repeats - 1):
        t1 = time.perf_counter()
        chapterer.predict(ten)
        lat10.append(time.perf_counter() - t1)
    lat60 = []
    for _ in range(max(1, args.repeats - 1)):
        t1 = time.perf_counter()
        p60 = chapterer.predict(sixty)
        lat60.append(time.perf_counter() - t1)
    print(json.dumps({"spec": args.spec, "load_s": load,
                      "first_answer_s": first, "spawn_to_first_s": cold, "lat10": lat10, "lat60": lat60,
                      "chapters10": len(p.chapters), "chapters60": len(p60.chapters), "lines10": len(ten.segments),
                      "lines60": len(sixty.segments), "peak_rss_mb": _peak_rss_mb()}))


def speed(args: argparse.Namespace) -> str:
    (RESULTS / "edge").mkdir(parents=True, exist_ok=True)
    transcripts = _speed_transcripts(RESULTS / "edge" / "speed-transcripts.jsonl")
    specs = [("PyTorch", args.torch)] + [(f"export {q}", f"export:{args.export}@{q}") for q in args.quants]
    rows = []
    for label, spec in specs:
        done = subprocess.run([sys.executable, __file__, "_child", spec, str(transcripts), "--repeats",
                               str(args.repeats), "--spawned", repr(time.time())], capture_output=True, text=True,
                              check=False, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{label} ({spec}) failed:\n{done.stderr[-3000:]}")
        rows.append((label, json.loads(done.stdout.strip().splitlines()[-1])))
        print(label, rows[-1][1], file=sys.stderr)
    base = rows[0][1]
    ten, sixty = base["lines10"], base["lines60"]
    out = [f"# Edge export speed on this CPU ({_cpu()})", "",
           (f"10-minute transcript: {ten} lines, 60-minute: {sixty} lines (first 10/60 min of the longest "
           f"held-out talk). Median of {args.repeats} runs (60 min: {max(1, args.repeats - 1)}); each "
           "runtime in a fresh process."), "",
           ("| runtime | load s | cold start s (spawn → first answer, 10 min) | latency 10 min s | latency 60 min s "
           "| peak RSS MB | × faster (10 / 60 min) | memory share |"), "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        m10, m60 = statistics.median(r["lat10"]), statistics.median(r["lat60"])
        b10, b60 = statistics.median(base["lat10"]), statistics.median(base["lat60"])
        out.append(f"| {label} | {r['load_s']:.2f} | {r['spawn_to_first_s']:.2f} | {m10:.2f} | {m60:.2f} | "
                   f"{r['peak_rss_mb']:.0f} | {b10 / m10:.1f} / {b60 / m60:.1f} | "
                   f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
    return "\n".join(out) + "\n"


def _cpu() -> str:
    import os

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("parity", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--torch", required=True, help="the PyTorch model spec, e.g. models:/chaptering/1")
        p.add_argument("--export", required=True, type=Path, help="the folder `chaptering export` wrote")
        p.add_argument("--quants", nargs="+", default=["q8_0"])
        p.add_argument("--out", type=Path, default=RESULTS / f"edge-{name}.md")
        if name == "parity":
            p.add_argument("--limit", type=int, help="only the first N held-out transcripts")
            p.add_argument("--reuse", action="store_true", help="reuse saved predictions of the same transcripts")
        else:
            p.add_argument("--repeats", type=int, default=3)
    c = sub.add_parser("_child")
    c.add_argument("spec")
    c.add_argument("transcripts")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--spawned", type=float, required=True)
    args = ap.parse_args()
    if args.cmd == "_child":
        child(args)
        return
    text = parity(args) if args.cmd == "parity" else speed(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
