"""Command line.

    python -m es2_lib run params/default.yaml [--publish] [--only STAGE ...] [--force] [-o key=value ...]
    python -m es2_lib prepare-model
"""

from __future__ import annotations

import argparse
import sys

import yaml

from . import models, params, pipeline


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"override {text!r} is not key=value")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es2_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every stage of a params file with papermill (skips current stages)")
    run.add_argument("params_file", help="e.g. params/default.yaml")
    run.add_argument("-o", "--override", action="append", type=_override, default=[], metavar="KEY=VALUE",
                     help="override one params key (YAML value)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages, e.g. 01_probing")
    run.add_argument("--force", action="store_true", help="rerun stages even when they are current")
    run.add_argument("--publish", action="store_true",
                     help="also write the executed notebooks over notebooks/ (for the committed default run)")
    sub.add_parser("prepare-model", help="assemble, verify and cache the embedded default model")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare-model":
            print(models.prepare_embedded())
        else:
            p = params.load(args.params_file, **dict(args.override))
            pipeline.run_pipeline(p, only=args.only, force=args.force, publish=args.publish)
    except (params.ParamsError, models.ModelLoadError, pipeline.StageFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
