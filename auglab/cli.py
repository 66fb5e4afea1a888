"""What every stage script shares: its argument parser, logging, and one-line errors."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from auglab import AuglabError
from auglab.files import NO_ROOM


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the stage's docstring, with --params."""
    result = argparse.ArgumentParser(description=doc)
    result.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    return result


def log(message: str) -> None:
    """Progress messages go to stderr so stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[argparse.Namespace], None], args: argparse.ArgumentParser) -> None:
    """Run a stage, turning the failures a user can act on into one line on stderr.

    An AuglabError becomes `error: <message>` and exit status 1; so does a full disk or a file over
    the size limit (ENOSPC, EDQUOT, EFBIG), naming the output being written. Ctrl-C becomes
    `interrupted: ...` and status 130, as from a shell. Outputs are written atomically
    (auglab.files), so none of these leaves a half-written output or loses the previous one.
    """
    namespace = args.parse_args()
    try:
        main(namespace)
    except AuglabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        print(f"error: disk full writing {e.filename or 'an output'} ({errno.errorcode[e.errno]}: "
              f"{os.strerror(e.errno)}), expected room for it; the previous output is kept", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        checkpoint = getattr(namespace, "checkpoint", None)  # the training stages' resumable state
        kept = f"; checkpoint kept at {checkpoint}" if checkpoint is not None and checkpoint.exists() else ""
        print(f"interrupted: outputs left as they were{kept}", file=sys.stderr)
        sys.exit(130)
