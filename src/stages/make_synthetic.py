"""Stage `make_synthetic`: generate the synthetic WBDC world of --preset/--seed.

With --null (or data.null_world: true) it writes the null world instead: the same shape, but
every label is Bernoulli(the action's base rate), independent of everything, so any day-14
score above 0.5 is chance or selection; it lives in data/synthetic/<preset>_seed<seed>_null/.

Writes data/synthetic/<preset>_seed<seed>/wechat_algo_data1/ (user_action.csv, feed_info.csv,
feed_embeddings.csv, test_a.csv in the official layout) and .../truth/ (day14_prob.csv,
test_truth.csv, world.json; never read by a training stage).  See docs/ARTIFACTS.md.

The world is built in a temporary folder and swapped into place when complete.  An existing
world of the same generator version, preset and seed is kept unless --force.  Nothing is
generated when data.data_dir points at real data.  Presets: tiny (tests, seconds),
small (default, ~1M rows), full (preliminary-round sizes, ~7.3M rows), final (final-round
sizes: 199,999 users, 106,444 feeds, ~73M action rows, ~4.2M test rows; writes ~4.8 GB).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.io import write_json  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402
from wbdc.synthetic import generate_world, world_is_current  # noqa: E402

STAGE = "make_synthetic"


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="make_synthetic.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--force", action="store_true",
                   help="regenerate even if the world already exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    p.add_argument("--null", action="store_true",
                   help="the null world (same as --set data.null_world=true): labels "
                        "Bernoulli(each action's base rate), independent of everything, in "
                        "data/synthetic/<preset>_seed<seed>_null/")
    args = p.parse_args()
    cfg = resolve(args)
    data = cfg["data"]
    if args.null:
        data["null_world"] = True
    null = bool(data.get("null_world", False))
    if data.get("data_dir"):
        print(f"[{STAGE}] data.data_dir is set ({', '.join(data['data_dir'])}): real data, nothing to "
              f"generate", file=sys.stderr)
        return 0
    preset, seed = str(data["preset"]), int(data["seed"])
    world_dir = Paths.at(args.root).world_of(data)
    kind = "null world" if null else "world"
    if not args.force and world_is_current(world_dir, preset, seed, null):
        print(f"[{STAGE}] {world_dir} already holds the {preset} {kind} of seed {seed}; "
              f"skipping (use --force to regenerate)", file=sys.stderr)
        return 0
    print(f"[{STAGE}] generating the {preset} {kind} (seed {seed}) into {world_dir}",
          file=sys.stderr, flush=True)
    with StageRun(STAGE, world_dir) as run:
        summary = generate_world(preset, seed, world_dir, progress=not args.quiet, null=null)
        write_json(cfg, world_dir / "config.json")
        sizes = summary["sizes"]
        run.info.update({"preset": preset, "seed": seed, "null_world": null,
                         "user_action_rows": sizes["user_action_rows"],
                         "test_rows": sizes["test_rows"], "steps": summary["steps"]})
    rates = summary["positive_rates"]["labels_days1_14"]
    print(f"[{STAGE}] {sizes['user_action_rows']:,} action rows ({sizes['day14_rows']:,} on day "
          f"14), {sizes['test_rows']:,} test rows, {sizes['feeds']:,} feeds, "
          f"{sizes['users']:,} users; cold test feeds {summary['cold_test_feed_share']:.1%}; "
          f"positive rates " + ", ".join(f"{a} {r:.4f}" for a, r in rates.items()),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
