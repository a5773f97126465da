"""Command line.

    python -m es2_lib run params/default.yaml [--publish] [--only STAGE ...] [--force] [-o key=value ...]
    python -m es2_lib resolve params/x.yaml [-o key=value ...] > resolved.yaml   # for papermill -f resolved.yaml
    python -m es2_lib prepare-model [--rebuild]
"""

from __future__ import annotations

import argparse
import sys

import yaml

from . import data, model_cache, params, pipeline, runs


def _override(text: str) -> tuple[str, object]:
    """`key=value` with a YAML value; a malformed one is a ParamsError naming the override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise params.ParamsError(f"override -o {text}: expected key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise params.ParamsError(f"override -o {text}: value is not valid YAML ({params.yaml_problem(err)})") from None


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override one params key (YAML value)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es2_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every stage of a params file with papermill (skips current stages)")
    run.add_argument("params_file", help="e.g. params/default.yaml")
    _overrides(run)
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages, e.g. 01_probing")
    run.add_argument("--force", action="store_true", help="rerun stages even when they are current")
    run.add_argument("--publish", action="store_true",
                     help="also write the executed notebooks over notebooks/ (for the committed default run)")
    resolve = sub.add_parser("resolve", help="print a params file fully resolved (base: chain, overrides) as YAML")
    resolve.add_argument("params_file", help="e.g. params/llama2-7b.yaml")
    _overrides(resolve)
    prepare = sub.add_parser("prepare-model", help="assemble, verify and cache the embedded default model")
    prepare.add_argument("--rebuild", action="store_true", help="build the cache again (e.g. after it was corrupted)")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare-model":
            print(model_cache.prepare_embedded(rebuild=args.rebuild))
        else:
            p = params.load(args.params_file, **dict(_override(text) for text in args.override))
            if args.command == "resolve":
                print(params.to_yaml(p, header=f"{args.params_file} resolved by python -m es2_lib resolve"), end="")
            else:
                pipeline.run_pipeline(p, only=args.only, force=args.force, publish=args.publish)
    except pipeline.StageInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # between stages, or while keys are computed: nothing half-written is kept
        print("stopped; every finished stage is kept: rerun the same command to resume", file=sys.stderr)
        return 130
    except (params.ParamsError, model_cache.ModelLoadError, data.DataError, pipeline.StageFailed,
            runs.RunLocked) as err:
        print("".join(f"error: {line}\n" for line in str(err).splitlines()), end="", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
