"""The exported (on-device) chapterer against the PyTorch one it came from: parity and speed (issue 19).

  parity: boundaries on every held-out transcript (data/eval/heldout.jsonl): how often the PyTorch path
          (MiniLM on PyTorch) and the export (ONNX MiniLM) place identical starts, primary F1 of each per
          domain and the headline difference; titles on the first N transcripts of each domain: ROUGE-L
          between the PyTorch titler and each exported title LM (GGUF, or int8 ONNX) on the same chapters,
          and against the reference titles.
  speed:  each runtime in fresh processes (--cold-runs, in turns): load time, cold start (process spawn to
          the first answer on a 10-minute transcript), latency on 10- and 60-minute transcripts, peak RSS
          (VmHWM), and the hypervisor's steal share while it ran (wall clocks are only comparable when low).

    python bench/edge.py parity --torch models:/chaptering/1 --export /tmp/edge --quants q8_0 q4_k_m f16
    python bench/edge.py speed  --torch models:/chaptering/1 --export /tmp/edge --quants q8_0 q4_k_m f16 \
        --edge-python /tmp/edge-venv/bin/python   # a venv with `pip install --no-deps -e .` + the edge extra

  standin: a bundle to time when no version is registered (a fresh state folder): trees fitted on the
          first N transcripts of each data/train file, and an untrained LoRA on the configured base, so
          the titles are the base model's. Speed depends on the shapes, not the weights; its chapter
          counts (and so its title work) are those of these trees, not of a registered version.

    python bench/edge.py standin --out /tmp/standin && chaptering export /tmp/standin --out /tmp/edge

  titles: the title step alone on the exported GGUF: the chapters the export places on the 10- and
          60-minute transcripts, titled one prompt at a time (llama-cpp-python's generate, as before the
          batch decoder) and in batches of each --batch size; seconds, and whether the titles agree.

    python bench/edge.py titles --export /tmp/edge --quant q8_0 --batch 1 8 16

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


def _torch_bundle(spec: str) -> tuple[Path, str, Any]:
    """The registered (or local) bundle behind `spec`: (folder, base model, settings)."""
    from chaptering.config import get_settings
    from chaptering.registry import fetch_model

    settings = get_settings().prepare()
    if Path(spec).is_dir():
        return Path(spec), settings.model.base, settings
    bundle, base, _ = fetch_model(spec, settings)
    return bundle, base, settings


def _prediction(t: Any, starts: list[int], titles: list[str] | None = None) -> Any:
    from chaptering.schema import PredictedChapter, Prediction

    titles = titles or ["-"] * len(starts)
    return Prediction(id=t.id, model="parity", chapters=[
        PredictedChapter(title=ti or "-", start_segment=s, start=t.segments[s].start) for s, ti in zip(starts, titles)])


def boundary_parity(transcripts: list[Any], bundle: Path, export: Path, cache_dir: Path) -> list[str]:
    """Chapter starts of the PyTorch boundary path (MiniLM on PyTorch, embeddings cache as in training)
    and of the export (ONNX MiniLM) on every transcript: the primary F1 and the headline depend on these
    alone, so they are the same for every GGUF quantisation."""
    from chaptering.boundary import BoundaryModel
    from chaptering.edge import load_export
    from chaptering.metrics import domain_of, headline, score

    torch_trees = BoundaryModel.load(bundle / "boundary")
    edge = load_export(export).boundary
    rows: dict[str, list[dict[str, Any]]] = {"torch": [], "export": []}
    same: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for t in transcripts:
        a, b = torch_trees.starts(t, cache_dir)[0], edge.starts(t)[0]
        for label, starts in (("torch", a), ("export", b)):
            rows[label].append({"id": t.id, "domain": domain_of(t), **score(t, _prediction(t, starts))})
        for d in (domain_of(t), "all"):
            same.setdefault(d, []).append(float(a == b))
    heads = {k: headline(v, n_boot=200)["mean"] for k, v in rows.items()}
    lines = [f"## Boundaries: {len(transcripts)} held-out transcripts ({time.perf_counter() - t0:.0f} s)", "",
             (f"Headline (macro F1 over domains): PyTorch {heads['torch']:.4f}, export {heads['export']:.4f}, "
             f"Δ {heads['export'] - heads['torch']:+.4f}. The trees, features and decoder are shared, so this "
             "holds for every quantisation (q8_0, q4_k_m, f16, int8): the title LM only writes titles."), "",
             "| domain | n | identical starts | F1 PyTorch | F1 export | Δ F1 |", "|---|---|---|---|---|---|"]
    for d in [*sorted({domain_of(t) for t in transcripts}), "all"]:
        f = {k: [r["f1"] for r in v if d in ("all", r["domain"])] for k, v in rows.items()}
        m = {k: sum(v) / len(v) for k, v in f.items()}
        lines.append(f"| {d} | {len(same[d])} | {sum(same[d]) / len(same[d]):.1%} | {m['torch']:.4f} | "
                     f"{m['export']:.4f} | {m['export'] - m['torch']:+.4f} |")
    return [*lines, ""]


def title_parity(transcripts: list[Any], bundle: Path, base: str, export: Path, quants: list[str],
                 cache_dir: Path, threads: int | None) -> list[str]:
    """Titles of the same chapters (the PyTorch starts) from the PyTorch titler and each exported title LM: ROUGE-L
    between them, identical share, and each one's ROUGE-L against the reference titles."""
    from chaptering.boundary import BoundaryModel
    from chaptering.boundary_chapterer import load_titler
    from chaptering.edge import load_export
    from chaptering.metrics import _rouge, score

    trees = BoundaryModel.load(bundle / "boundary")
    starts = [trees.starts(t, cache_dir)[0] for t in transcripts]
    runs: dict[str, tuple[list[list[str]], float]] = {}

    def run(label: str, titler: Any) -> None:
        t0 = time.perf_counter()
        runs[label] = ([titler.titles(t, s)[0] for t, s in zip(transcripts, starts)], time.perf_counter() - t0)

    run("PyTorch", load_titler(bundle / "adapter", base, cache_dir))
    for q in quants:
        run(q, load_export(export, q, threads).titler)
    n_chapters = sum(len(s) for s in starts)
    lines = [f"## Titles: {len(transcripts)} held-out transcripts, {n_chapters} chapters (the PyTorch starts)", "",
             "| titler | ROUGE-L vs PyTorch titles | identical to PyTorch | ROUGE-L vs reference | seconds |",
             "|---|---|---|---|---|"]
    ref_titles = runs["PyTorch"][0]
    for label, (titles, secs) in runs.items():
        pairs = [(a, b) for ta, tb in zip(ref_titles, titles) for a, b in zip(ta, tb)]
        rouge = sum(1.0 if a == b else _rouge().score(a, b)["rougeL"].fmeasure for a, b in pairs) / max(1, len(pairs))
        same = sum(a == b for a, b in pairs) / max(1, len(pairs))
        vs_ref = [score(t, _prediction(t, s, ti))["title_rouge_l"] for t, s, ti in zip(transcripts, starts, titles)]
        vs_ref = [v for v in vs_ref if v is not None]
        lines.append(f"| {label} | {rouge:.3f} | {same:.1%} | {sum(vs_ref) / max(1, len(vs_ref)):.3f} | {secs:.0f} |")
    return [*lines, ""]


def parity(args: argparse.Namespace) -> str:
    from chaptering.heldout import load_heldout
    from chaptering.metrics import domain_of

    def first(transcripts: list[Any], n: int | None) -> list[Any]:
        """The first n of each domain, so long meetings and short videos both count."""
        seen: dict[str, int] = {}
        out = []
        for t in transcripts:
            d = domain_of(t)
            if n is None or seen.get(d, 0) < n:
                out.append(t)
                seen[d] = seen.get(d, 0) + 1
        return out

    transcripts = load_heldout(HELDOUT)
    bundle, base, settings = _torch_bundle(args.torch)
    lines = [f"# Edge export parity: `{args.export}` vs `{args.torch}`", ""]
    lines += boundary_parity(first(transcripts, args.boundaries_per_domain), bundle, args.export,
                             settings.cache_dir)
    lines += title_parity(first(transcripts, args.titles_per_domain), bundle, base, args.export, args.quants,
                          settings.cache_dir, args.threads)
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
        rows.append(longest.model_copy(update={"id": f"{longest.id}-{minutes}min", "segments": segs,
                                               "chapters": None}))
    out.write_text("".join(t.model_dump_json() + "\n" for t in rows))
    return out


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One runtime in this (fresh) process: prints one JSON line of timings. An export loads as a device
    loads it (chaptering.edge alone: no settings, no factory), so it also runs under --edge-python."""
    from chaptering.schema import Transcript

    ten, sixty = [Transcript.model_validate_json(line) for line in Path(args.transcripts).read_text().splitlines()]
    t0 = time.perf_counter()
    if args.spec.startswith("export:"):
        from chaptering.edge import load_export, parse_spec

        chapterer = load_export(*parse_spec(args.spec))
    else:
        from chaptering.config import get_settings
        from chaptering.factory import load_chapterer

        chapterer = load_chapterer(args.spec, get_settings().prepare())
    if getattr(chapterer, "cache_dir", None) is not None:
        # The export embeds every line every time; a PyTorch run reading the embedding cache would time
        # only its trees and titles (a transcript it had seen before costs no MiniLM pass).
        chapterer.cache_dir = None
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


def _cpu_ticks() -> list[int]:
    """The machine's CPU ticks from /proc/stat: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def _steal_share(before: list[int], after: list[int]) -> float:
    """Share of the busy CPU time the hypervisor gave to other guests: wall-clock timings taken while it
    is high are slower than the code (2026-12-06: 20-30 %, and every path ran 1.5-2.5x slower)."""
    d = [b - a for a, b in zip(before, after)]
    busy = d[0] + d[1] + d[2] + d[5] + d[6] + d[7]
    return d[7] / busy if busy else 0.0


def _one_runtime(python: str, spec: str, transcripts: Path, repeats: int) -> dict[str, Any]:
    ticks = _cpu_ticks()
    done = subprocess.run([python, __file__, "_child", spec, str(transcripts), "--repeats", str(repeats),
                           "--spawned", repr(time.time())], capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "steal": _steal_share(ticks, _cpu_ticks())}


def speed(args: argparse.Namespace) -> str:
    """Each runtime in `--cold-runs` fresh processes, taken in turns (so a noisy spell hits all of them):
    load and cold start are the fastest run's (the least disturbed), latencies the median of every run."""
    (RESULTS / "edge").mkdir(parents=True, exist_ok=True)
    transcripts = _speed_transcripts(RESULTS / "edge" / "speed-transcripts.jsonl")
    specs = [("PyTorch", args.torch)] + [(f"export {q}", f"export:{args.export}@{q}") for q in args.quants]
    if args.also:
        specs += [(f"export {spec.removeprefix('export:')}", spec) for spec in args.also]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in specs}
    for _ in range(args.cold_runs):
        for label, spec in specs:
            python = str(args.edge_python) if args.edge_python and spec.startswith("export:") else sys.executable
            runs[label].append(_one_runtime(python, spec, transcripts, args.repeats))
            print(label, runs[label][-1], file=sys.stderr)
    rows = [(label, {"load_s": min(r["load_s"] for r in rs), "spawn_to_first_s": min(r["spawn_to_first_s"] for r in rs),
                     "lat10": [v for r in rs for v in r["lat10"]], "lat60": [v for r in rs for v in r["lat60"]],
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "lines10": rs[0]["lines10"],
                     "lines60": rs[0]["lines60"], "chapters10": rs[0]["chapters10"], "chapters60": rs[0]["chapters60"],
                     "steal": statistics.mean(r["steal"] for r in rs)})
            for label, rs in runs.items()]
    base = rows[0][1]
    ten, sixty = base["lines10"], base["lines60"]
    out = [f"# Edge export speed on this CPU ({_cpu()})", "",
           (f"10-minute transcript: {ten} lines, 60-minute: {sixty} lines (first 10/60 min of the longest "
           f"held-out talk). {args.cold_runs} fresh process(es) per runtime, in turns; load and cold start: the "
           f"fastest; latencies: median of {args.repeats} runs a process (60 min: {max(1, args.repeats - 1)}). "
           "Steal: the share of busy CPU time the hypervisor gave to other guests while it ran; above ~5 % the "
           "wall-clock columns are slower than the code. An export's load is until `load_export` returns: its "
           "title LM goes on loading in the background, behind the first answer's boundaries."), "",
           (f"Chapters titled: {base['chapters10']} (10 min), {base['chapters60']} (60 min)."), "",
           ("| runtime | load s | cold start s (spawn → first answer, 10 min) | latency 10 min s | latency 60 min s "
           "| peak RSS MB | × faster (10 / 60 min) | memory share | steal |"), "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        m10, m60 = statistics.median(r["lat10"]), statistics.median(r["lat60"])
        b10, b60 = statistics.median(base["lat10"]), statistics.median(base["lat60"])
        out.append(f"| {label} | {r['load_s']:.2f} | {r['spawn_to_first_s']:.2f} | {m10:.2f} | {m60:.2f} | "
                   f"{r['peak_rss_mb']:.0f} | {b10 / m10:.1f} / {b60 / m60:.1f} | "
                   f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['steal']:.0%} |")
    return "\n".join(out) + "\n"


def standin(out: Path, per_file: int) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chaptering import boundary
    from chaptering.boundary_chapterer import write_bundle
    from chaptering.config import get_settings
    from chaptering.io import read_transcripts
    from chaptering.models import resolve_base

    settings = get_settings().prepare()
    transcripts = [t for f in sorted((ROOT / "data" / "train").glob("*.jsonl"))
                   for t in read_transcripts(f)[:per_file] if t.chapters]
    trees = boundary.fit(transcripts, cache_dir=settings.cache_dir, progress=False)
    base = resolve_base(settings.model.base, settings.cache_dir)
    adapter = out.parent / f"{out.name}-adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=settings.train.lora_r, lora_alpha=settings.train.lora_alpha, target_modules=settings.train.target_modules,
        task_type="CAUSAL_LM"))
    model.save_pretrained(str(adapter), safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(str(adapter))
    write_bundle(out, trees, adapter)
    return f"stand-in bundle {out}: trees on {len(transcripts)} transcripts ({trees.decoder}), untrained LoRA\n"


def titles(args: argparse.Namespace) -> str:
    from chaptering.edge import load_export
    from chaptering.schema import Transcript
    from chaptering.titles import chapter_text

    path = _speed_transcripts(RESULTS / "edge" / "speed-transcripts.jsonl")
    chapterer = load_export(args.export, args.quant, threads=args.threads)
    titler = chapterer.titler
    out = [f"# Edge titles: one at a time vs batched ({args.quant}, {_cpu()})", "",
           "| transcript | chapters | prompt tokens | one at a time s | " +
           " | ".join(f"batch {b} s" for b in args.batch) + " | titles equal to one-at-a-time |",
           "|---|---|---|---|" + "---|" * len(args.batch) + "---|"]
    for line in path.read_text().splitlines():
        t = Transcript.model_validate_json(line)
        starts = chapterer.predict(t).boundaries
        texts = [chapter_text(t, a, b) for a, b in zip(starts, [*starts[1:], len(t.segments)])]
        tokens = sum(len(titler.prompt_ids(x)) for x in texts)
        t0 = time.perf_counter()
        single = [_one_title(titler, x) for x in texts]
        cells = [f"{time.perf_counter() - t0:.2f}"]
        same = []
        for b in args.batch:
            titler.resize(b)
            t0 = time.perf_counter()
            got = [y for i in range(0, len(texts), b) for y in titler._batch(texts[i:i + b])]
            cells.append(f"{time.perf_counter() - t0:.2f}")
            same.append(f"{sum(x == y for x, y in zip(single, got))}/{len(texts)}")
        out.append(f"| {t.id} | {len(texts)} | {tokens} | " + " | ".join(cells) + " | " + ", ".join(same) + " |")
    return "\n".join(out) + "\n"


def _one_title(titler: Any, text: str) -> str:
    """One prompt alone: through llama-cpp-python's own generate for a GGUF (prefix reuse between calls,
    one row per step), as a pass of one for the int8 ONNX titler."""
    from chaptering.prompt import clean_title

    ids = titler.prompt_ids(text)
    if not hasattr(titler, "llm"):
        (out,) = titler.decoder.generate([ids], titler.max_new_tokens, titler.stop_ids)
        return clean_title(titler.tok.decode(out, skip_special_tokens=True).strip().split("\n")[0])
    out = []
    for token in titler.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if token in titler.stop_ids:
            break
        out.append(int(token))
        if len(out) >= titler.max_new_tokens:
            break
    return clean_title(titler.tok.decode(out, skip_special_tokens=True).strip().split("\n")[0])


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
        p.add_argument("--threads", type=int, help="CPU threads for the export (default: all cores)")
        if name == "parity":
            p.add_argument("--boundaries-per-domain", type=int, help="boundary parity on the first N of each "
                           "domain (default: every held-out transcript)")
            p.add_argument("--titles-per-domain", type=int, default=6,
                           help="title parity on the first N transcripts of each domain (the LM is the slow part)")
        else:
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--cold-runs", type=int, default=1, help="fresh processes per runtime, in turns")
            p.add_argument("--also", nargs="*", default=[], help="more export specs, e.g. export:/tmp/edge-enc8@int8")
            p.add_argument("--edge-python", type=Path,
                           help="run the export in this interpreter: a venv with only `pip install --no-deps -e .` "
                                "and the edge extra, as on a device (the dev venv's pandas, scikit-learn and "
                                "dask make `import lightgbm` ~130 MB heavier)")
    ti = sub.add_parser("titles")
    ti.add_argument("--export", required=True, type=Path)
    ti.add_argument("--quant", default="q8_0")
    ti.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ti.add_argument("--threads", type=int)
    ti.add_argument("--out", type=Path, default=RESULTS / "edge-titles.md")
    st = sub.add_parser("standin")
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--per-file", type=int, default=12, help="transcripts from each data/train file")
    c = sub.add_parser("_child")
    c.add_argument("spec")
    c.add_argument("transcripts")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--spawned", type=float, required=True)
    args = ap.parse_args()
    if args.cmd == "_child":
        child(args)
        return
    if args.cmd == "standin":
        print(standin(args.out, args.per_file))
        return
    text = {"parity": parity, "speed": speed, "titles": titles}[args.cmd](args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
