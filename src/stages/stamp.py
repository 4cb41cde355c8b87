"""Pipeline bookkeeping for run_all.sh: the run's plan, is a stage up to date, mark it started / done.

  stamp.py plan [--models M] [--mode X] [--from STAGE] [common flags]
                          print the run's stages, one per line: NAME<TAB>SCRIPT<TAB>ARGS
                          (exit 2 on an unknown model, stage or config key)
  stamp.py check STAGE [--models ...] [common flags] [-- stage args]   exit 0 if up to date, 1 if not
  stamp.py begin STAGE ...   forget the stage's stamp before it runs
  stamp.py done STAGE ...    record the stage's stamp after it succeeded
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import ConfigError, add_common_args, resolve  # noqa: E402
from wbdc.pipeline import Stamps, plan, stage_specs  # noqa: E402
from wbdc.registry import DEFAULT_MODELS, parse_models  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["plan", "check", "begin", "done"])
    p.add_argument("stage", nargs="?", default=None)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated models in this run (the popularity baseline is always in)")
    p.add_argument("--mode", choices=["offline", "online", "all"], default="all")
    p.add_argument("--from", dest="from_stage", default=None, help="(plan) first stage to force")
    add_common_args(p)
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)
    try:
        models = parse_models(args.models)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = resolve(args)
    specs = stage_specs(models)
    if args.action == "plan":
        steps = plan(specs, cfg, args.root, args.mode)
        names = [s[0] for s in steps]
        if args.from_stage is not None and args.from_stage not in names:
            raise ConfigError(f"--from {args.from_stage}: not a stage of this run (stages: "
                              f"{', '.join(names)})")
        for name, script, stage_args in steps:
            print(f"{name}\t{script}\t{' '.join(stage_args)}")
        return 0
    if args.stage not in specs:
        raise ConfigError(f"stamp.py: unknown stage {args.stage!r}; known: {', '.join(specs)}")
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
