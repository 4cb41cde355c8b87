"""Stage `prepare`: validate the official WBDC CSVs and cache them as typed parquet/npy.

Reads --data-dir (official layout; repeatable or a comma list: several folders are read
together, a later folder's user_action row winning a (userid, feedid) duplicate) or, by
default, the synthetic world of --preset/--seed, and writes data/prepared/ (see
docs/ARTIFACTS.md). Skips the work when the inputs are unchanged.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.io import InputError, write_json  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.prepare import TRUTH_FILES, is_up_to_date, prepare, resolve_source  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--test-file", default=None, help="test file to predict: test_a.csv (default) or test_b.csv")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = p.parse_args()
    cfg = resolve(args)
    if args.test_file:
        cfg["data"]["test_file"] = args.test_file
    paths = Paths.at(args.root)
    src = resolve_source(cfg, paths)
    for d in src.raw_dirs:
        if not d.is_dir():
            hint = ("generate it with src/stages/make_synthetic.py" if src.truth_dir is not None
                    else "pass folders holding user_action.csv, feed_info.csv, feed_embeddings.csv, "
                         f"{src.test_file}")
            raise InputError(f"{d}: data folder missing; {hint}")
    if src.truth_dir is not None and cfg["data"].get("data_dir"):
        missing = [f for f in TRUTH_FILES if not (src.truth_dir / f).is_file()]
        if missing:
            raise InputError(f"{src.truth_dir}: data.truth_dir lacks {', '.join(missing)} "
                             "(expected the true probabilities in this project's layout)")
    out = paths.prepared
    if not args.force and is_up_to_date(out, src.raw_dirs, src.test_file, src.truth_dir):
        print(f"[prepare] {out} is up to date with {src.label}; nothing to do", file=sys.stderr)
        return 0
    print(f"[prepare] reading {src.label} (test file {src.test_file})", file=sys.stderr)
    with StageRun("prepare", out) as run:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            meta = prepare(src.raw_dirs, out, src.test_file, src.truth_dir)
        for w in caught:
            print(f"[prepare] warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        write_json(cfg, out / "config.json")
        run.info.update({k: meta[k] for k in ("n_actions", "n_test", "n_feeds", "n_duplicates_removed")})
    print(f"[prepare] {meta['n_actions']:,} action rows ({meta['n_duplicates_removed']:,} duplicates "
          f"removed), {meta['n_test']:,} test rows, {meta['n_feeds']:,} feeds -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
