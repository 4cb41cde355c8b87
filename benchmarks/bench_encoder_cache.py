"""Benchmark of the nets' encoder cache (``nn.features.encoder_cache``): the online refit's
encoder fitted with the offline days' summaries read from the cache against a fit over every
day, side by side on one feature store; the encoders compared.

Three fits with the nets' default columns (``configs/nn.yaml``):

1. ``offline, cold``: days first..13 into an empty cache (what the offline fit does; it writes
   each day's summary);
2. ``online, cached``: days first..14 reading that cache (what the online refit and every later
   net do: day 14 is the only pass over the store);
3. ``online, no cache``: days first..14, every day read (the code before the cache).

    .venv/bin/python benchmarks/bench_encoder_cache.py --root ROOT

ROOT holds a built feature store (e.g. ``bash run_all.sh --preset small --models lgb``).  The
cache goes to a temporary folder, never to ROOT.  Prints seconds, rows read and the ratio of (2)
to (3); checks the two online encoders are equal (vocabularies and moments).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wbdc.config import load_defaults  # noqa: E402
from wbdc.features.store import FeatureStore  # noqa: E402
from wbdc.nn.data import Encoder, select_features  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.nn.pipeline import VALID_DAY  # noqa: E402
from wbdc.schema import LAST_TRAIN_DAY  # noqa: E402


def same_encoder(a: Encoder, b: Encoder) -> bool:
    return (all(np.array_equal(a.vocab[k], b.vocab[k]) for k in a.vocab)
            and all(np.array_equal(a.dense_stats[k], b.dense_stats[k]) for k in ("log", "mean", "std"))
            and all(np.array_equal(a.key_ids[k], b.key_ids[k]) for k in a.key_ids)
            and all(np.array_equal(a.token_vocab[k], b.token_vocab[k]) for k in a.token_vocab))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a root with features/ built")
    ap.add_argument("--progress", action="store_true", help="tqdm bars of the rows read")
    args = ap.parse_args(argv)
    store = FeatureStore(Paths.at(args.root))
    nn = load_defaults()["nn"]
    sel = select_features(store, nn["features"])
    offline = [d for d in store.days if d < VALID_DAY]
    online = [d for d in store.days if d <= LAST_TRAIN_DAY]
    fcfg = (int(nn["features"]["max_list_len"]), str(nn["features"]["dense_dtype"]))
    rows = {"offline": sum(store.n_rows(d) for d in offline), "online": sum(store.n_rows(d) for d in online)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_encoder_cache.") as tmp:
        for name, days, cache in (("offline, cold", offline, tmp), ("online, cached", online, tmp),
                                  ("online, no cache", online, None)):
            t0 = time.perf_counter()
            enc = Encoder.fit_days(store, days, sel, *fcfg, progress=args.progress, cache_dir=cache)
            sec = time.perf_counter() - t0
            read = sum(store.n_rows(d) for d in days[enc.cached_days:])   # cached: the first days
            runs.append((name, days, sec, read, enc))
            print(f"[bench] {name}: {sec:.1f} s", file=sys.stderr, flush=True)
    print(f"encoder fits, root {args.root}: {len(sel.categorical)} ids, {len(sel.dense)} dense; "
          f"offline days {offline[0]}..{offline[-1]} ({rows['offline']:,} rows), online "
          f"{online[0]}..{online[-1]} ({rows['online']:,} rows)")
    print("| fit | days | seconds | rows read from the store |")
    print("|---|---|---:|---:|")
    for name, days, sec, read, _ in runs:
        print(f"| {name} | {days[0]}..{days[-1]} | {sec:.1f} | {read:,} |")
    cached, plain = runs[1], runs[2]
    print(f"online fit, cached / no cache: {cached[2] / plain[2]:.3f}x the time; "
          f"encoders equal: {same_encoder(cached[4], plain[4])}")
    return 0 if same_encoder(cached[4], plain[4]) else 1


if __name__ == "__main__":
    sys.exit(main())
