"""`python -m chaptering.edge DIR INPUT [--out FILE]`: chapters for every transcript in INPUT (.jsonl,
.json, .vtt, .srt) from an exported folder, as prediction JSON lines; needs no PyTorch, no Typer, no
settings file: what ships with an editor app."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaptering.edge", description=__doc__)
    ap.add_argument("folder", type=Path, help="a folder written by `chaptering export`")
    ap.add_argument("input", type=Path, help="transcripts: .jsonl, .json, .vtt or .srt")
    ap.add_argument("--out", "-o", type=Path, help="prediction JSONL to write (default: stdout)")
    ap.add_argument("--quant", help="which exported GGUF to run (default: the manifest's first)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    ap.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest")
    args = ap.parse_args(argv)

    from chaptering.edge import load_export
    from chaptering.io import InputError, read_transcripts

    try:
        transcripts = read_transcripts(args.input)
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        chapterer = load_export(args.folder, args.quant, args.threads, checksums=args.verify)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = time.perf_counter() - t0
    out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    try:
        for t in transcripts:
            out.write(chapterer.predict(t).model_dump_json() + "\n")
            out.flush()
    except (ValueError, FileNotFoundError) as err:  # the title LM loads in the background: its errors show here
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.out:
            out.close()
    print(f"{len(transcripts)} predictions from {chapterer.name} (load {loaded:.2f} s, total "
          f"{time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
