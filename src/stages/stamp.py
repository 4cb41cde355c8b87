"""Pipeline bookkeeping for run_all.sh: is a stage up to date, mark it started / done.

  stamp.py check STAGE [--models ...] [common flags] [-- stage args]   exit 0 if up to date, 1 if not
  stamp.py begin STAGE ...   forget the stage's stamp (and its downstream stamps) before it runs
  stamp.py done STAGE ...    record the stage's stamp after it succeeded
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.pipeline import Stamps, stage_specs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["check", "begin", "done"])
    p.add_argument("stage")
    p.add_argument("--models", default="lgb,sb,mmoe,ple", help="comma-separated model stages in this run")
    add_common_args(p)
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)
    cfg = resolve(args)
    specs = stage_specs(args.models.split(","))
    if args.stage not in specs:
        raise SystemExit(f"stamp.py: unknown stage {args.stage!r}; known: {', '.join(specs)}")
    spec = specs[args.stage]
    stamps = Stamps(args.root)
    if args.action == "check":
        return 0 if stamps.is_current(spec, cfg, extra) else 1
    if args.action == "begin":
        stamps.invalidate(spec.name)
        return 0
    stamps.write(spec, cfg, extra)
    return 0


if __name__ == "__main__":
    run_main(main)
