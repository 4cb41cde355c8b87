"""Benchmark of the word2vec choices (``features.w2v``): the time of one training epoch of the
feed and author models under each way of feeding gensim, side by side in one run.

The corpora are written exactly as the features stage writes them (user buckets in user order,
one sentence per user, ``wbdc.features.w2v.user_sequences``) from the prepared caches under
--root, then cut to the first ``--fraction`` of their lines (so a `final`-size measurement fits a
session).  Choices (``--choices``):

  line:1   LineSentence streamed by Python, 1 worker  (deterministic: true, the bit-reproducible one)
  line:2   LineSentence, 2 workers                    (deterministic: false)
  file:1   gensim corpus_file mode, 1 worker          (corpus_file: true)
  file:2   corpus_file mode, 2 workers                (corpus_file: true, deterministic: false)

Each choice trains ``--epochs`` epochs (default 1) in a fresh process; the table gives the
seconds (vocabulary scan included), tokens per second of training, and the ratio to line:1.
Projecting the stage's word2vec time: seconds(epochs) ~= scan + epochs x epoch time, which the
table's two columns give when run with --epochs 1 and 2.

    nice .venv/bin/python benchmarks/bench_w2v.py --root /work/scratch/final --fraction 0.1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CHOICES = {"line:1": (False, 1), "line:2": (False, 2), "file:1": (True, 1), "file:2": (True, 2)}


def write_corpora(prepared: Path, work: Path, fraction: float, buckets: int) -> dict[str, tuple[Path, int]]:
    """The stage's feed and author corpora (first ``fraction`` of the sentences): {kind: (path, tokens)}."""
    import pyarrow.parquet as pq

    from wbdc.features import partition
    from wbdc.features import static as static_mod
    from wbdc.features.families import RowSet
    from wbdc.features.w2v import user_sequences, write_sentences

    static = static_mod.feed_static(pq.read_table(prepared / "feeds.parquet"))
    staged = partition.stage_rows(prepared, work / "stage", buckets)
    out = {k: work / f"corpus_{k}.txt" for k in ("feed", "author")}
    files = {k: open(p, "w") for k, p in out.items()}
    for b in range(staged.n_buckets):
        rs = RowSet(partition.read_bucket(staged, b, ["userid", "feedid", "date_", "device"], staged.days()),
                    static, labels=False)
        for kind, item in (("feed", "feedid"), ("author", "authorid")):
            write_sentences(files[kind], user_sequences(rs.expo["userid"], rs.expo[item], rs.expo["date_"]))
    for f in files.values():
        f.close()
    result = {}
    for kind, p in out.items():
        lines = p.read_text().splitlines(keepends=True)
        keep = lines[: max(1, int(len(lines) * fraction))]
        p.write_text("".join(keep))
        result[kind] = (p, sum(len(line.split()) for line in keep))
    return result


def train_once(corpus: str, kind: str, choice: str, epochs: int) -> dict:
    """One training in this process: the config's model for ``kind``, the choice's feeding."""
    from wbdc.config import resolve_argv
    from wbdc.features.w2v import train_word2vec

    cfg = dict(resolve_argv([])["features"]["w2v"][kind])
    cfg["epochs"] = epochs
    corpus_file, workers = CHOICES[choice]
    t = time.perf_counter()
    c = time.process_time()
    wv = train_word2vec(corpus, cfg, seed=2021, workers=workers, corpus_file=corpus_file)
    return {"seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "vocab": len(wv.key_to_index)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="artifact root holding data/prepared (prepare stage)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the corpus lines kept (0 < f <= 1)")
    p.add_argument("--choices", default="line:1,file:1,file:2", help=f"comma list of {','.join(CHOICES)}")
    p.add_argument("--kinds", default="feed,author")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--buckets", type=int, default=7, help="user buckets used to write the corpora")
    p.add_argument("--train", nargs=4, metavar=("CORPUS", "KIND", "CHOICE", "EPOCHS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.train:
        print(json.dumps(train_once(a.train[0], a.train[1], a.train[2], int(a.train[3]))))
        return 0
    choices = [c for c in a.choices.split(",") if c]
    bad = [c for c in choices if c not in CHOICES]
    if bad or not 0 < a.fraction <= 1:
        p.error(f"unknown choice {bad[0]}" if bad else "--fraction must be in (0, 1]")
    prepared = Path(a.root) / "data" / "prepared"
    with tempfile.TemporaryDirectory(dir=a.root) as tmp:
        t = time.perf_counter()
        corpora = write_corpora(prepared, Path(tmp), a.fraction, a.buckets)
        print(f"corpora written in {time.perf_counter() - t:.0f} s: "
              + ", ".join(f"{k} {n:,} tokens" for k, (_, n) in corpora.items()), flush=True)
        rows = []
        for kind in a.kinds.split(","):
            path, tokens = corpora[kind]
            for choice in choices:
                r = subprocess.run([sys.executable, __file__, "--root", a.root, "--train", str(path), kind, choice,
                                    str(a.epochs)], capture_output=True, text=True, check=True)
                res = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append((kind, choice, tokens, res))
                print(f"  {kind} {choice}: {res['seconds']:.1f} s", flush=True)
    print(f"\nword2vec, {a.epochs} epoch(s), first {a.fraction:.0%} of the corpora of {a.root}")
    print(f"{'model':<7} {'choice':<7} {'tokens':>12} {'wall s':>8} {'cpu s':>8} {'tokens/s':>10} {'vs line:1':>9}")
    base = {k: r["seconds"] for k, c, _, r in rows if c == "line:1"}
    for kind, choice, tokens, r in rows:
        ratio = f"{base[kind] / r['seconds']:.2f}x" if kind in base else "-"
        print(f"{kind:<7} {choice:<7} {tokens:>12,} {r['seconds']:>8.1f} {r['cpu']:>8.1f} "
              f"{tokens * a.epochs / r['seconds']:>10,.0f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
