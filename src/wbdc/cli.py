"""Shared entry-point plumbing: clear one-line errors instead of tracebacks for known failures."""
from __future__ import annotations

import sys
from typing import Callable

from .io import InputError


def run_main(main: Callable[[], int | None]) -> None:
    try:
        code = main()
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
