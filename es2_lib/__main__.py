"""Command line: `python -m es2_lib prepare-model` builds the embedded model's cache."""

from __future__ import annotations

import argparse
import sys

from . import models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es2_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare-model", help="assemble, verify and cache the embedded default model")
    args = parser.parse_args(argv)
    if args.command == "prepare-model":
        print(models.prepare_embedded())
    return 0


if __name__ == "__main__":
    sys.exit(main())
