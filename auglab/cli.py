"""What every stage script shares: its argument parser, logging, and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from auglab import AuglabError


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the stage's docstring, with --params."""
    result = argparse.ArgumentParser(description=doc)
    result.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    return result


def log(message: str) -> None:
    """Progress messages go to stderr so stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[argparse.Namespace], None], args: argparse.ArgumentParser) -> None:
    """Run a stage; an AuglabError becomes `error: <message>` on stderr and exit status 1."""
    namespace = args.parse_args()
    try:
        main(namespace)
    except AuglabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
