"""Shared entry-point plumbing: clear one-line errors instead of tracebacks for known failures.

Anticipated failures (bad input or config: :class:`~wbdc.io.InputError`; a missing, unreadable
or misplaced file; a full disk; running out of memory) end the stage with one line
``error: ...`` on stderr and exit status 2.  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable

from .io import InputError

#: OSError kinds that are about the user's files or machine, not about this code.
ANTICIPATED_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                  FileExistsError)
ANTICIPATED_ERRNO = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE)


def one_line(e: BaseException) -> str:
    """The message of an anticipated error as a single line."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.filename}: {e.strerror}"
    elif isinstance(e, MemoryError):
        msg = f"out of memory{': ' + str(e) if str(e) else ''}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


def is_anticipated(e: BaseException) -> bool:
    if isinstance(e, (InputError, MemoryError, *ANTICIPATED_OS)):
        return True
    return isinstance(e, OSError) and e.errno in ANTICIPATED_ERRNO


def run_main(main: Callable[[], int | None]) -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - anticipated ones become one line, the rest re-raise
        if not is_anticipated(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
