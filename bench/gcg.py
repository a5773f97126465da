"""Benchmark: seconds per GCG step, es2_lib.attacks.gcg against nanoGCG, same model, prompt, target and budget.

Ours runs in this process; nanoGCG (PyPI nanogcg 0.3.0, which pins transformers <= 4.47) runs right after in a
subprocess with the Python of its own virtual environment (`--nanogcg-python`), on the same weights (the
folder the model was loaded from, or a temporary copy for random-weight specs), once with its prefix cache
(its default) and once without (`--nanogcg-modes`). All start from the same "! ! …" suffix with the same
search width, top-k, steps, seed and thread count (each with its own batch size: ours small, to reuse more of
the suffix cache; nanoGCG its default, the whole width). The script prints the per-step seconds of each and
the ratios, and the loss curves; it re-scores nanoGCG's best suffix with our exact scorer and exits with an
error when that differs from the loss nanoGCG reports (then the two did not run the same model and prompt); it
writes bench/results/gcg.json and gcg.png.

Setup of the baseline (once; `make bench` does it): python3 -m venv .venv-nanogcg &&
.venv-nanogcg/bin/pip install torch==2.13.0 nanogcg==0.3.0 transformers==4.47.1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from es2_lib import data, models  # noqa: E402
from es2_lib.attacks import gcg  # noqa: E402

LOSS_TOLERANCE = 1e-2  # |nanoGCG's best loss - our score of its best suffix| above this voids the comparison
MODES = {"prefix-cache": True, "no-prefix-cache": False}  # nanoGCG's use_prefix_cache per baseline run


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="models.load_model spec (default: embedded)")
    ap.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--steps", type=int, default=5, help="GCG steps of each implementation")
    ap.add_argument("--search-width", type=int, default=64, help="single-token swaps per step")
    ap.add_argument("--topk", type=int, default=64, help="candidate tokens per position")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="our candidates per forward pass (small batches reuse more of the suffix's cache)")
    ap.add_argument("--nanogcg-batch-size", type=int, default=None,
                    help="nanoGCG's candidates per forward pass (default: its own, the whole search width)")
    ap.add_argument("--suffix-tokens", type=int, default=20)
    ap.add_argument("--prompt-index", type=int, default=0, help="row of data/advbench/harmful_behaviors.csv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nanogcg-python", default=str(ROOT / ".venv-nanogcg" / "bin" / "python"),
                    help="Python of a virtual environment with nanogcg==0.3.0")
    ap.add_argument("--nanogcg-modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="nanoGCG runs: with its prefix cache (its default) and/or with use_prefix_cache=False")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gcg.json"))
    return ap.parse_args()


def weights_dir(args: argparse.Namespace, model, tokenizer, tmp: Path) -> Path:
    """A folder with the exact weights `model` has, for nanoGCG to load."""
    if args.model == "embedded":
        return models.prepare_embedded(progress=False)
    if Path(args.model).is_dir() and list(Path(args.model).glob("*.safetensors")):
        return Path(args.model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def run_ours(args, model, tokenizer, prompt: str, target: str) -> dict:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    search = gcg.GCG(model, tokenizer, prompt, target, args.suffix_tokens, args.topk, args.search_width,
                     args.batch_size, args.seed)
    setup = time.perf_counter() - start
    losses, step_s = [search.loss], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(search.step())
        step_s.append(time.perf_counter() - start)
    return {"losses": losses, "step_s": step_s, "setup_s": setup, "best_string": tokenizer.decode(search.suffix),
            "search": search}


def run_nanogcg(args, model_dir: Path, chat_template: str, prompt: str, target: str, prefix_cache: bool) -> dict:
    cfg = {"model_dir": str(model_dir), "chat_template": chat_template, "dtype": args.dtype,
           "device": str(models.resolve_device(args.device)),
           "threads": torch.get_num_threads(), "prompt": prompt, "target": target,
           "optim_str_init": " !" * args.suffix_tokens, "steps": args.steps, "search_width": args.search_width,
           "topk": args.topk, "batch_size": args.nanogcg_batch_size, "seed": args.seed,
           "use_prefix_cache": prefix_cache}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([args.nanogcg_python, str(ROOT / "bench" / "nanogcg_worker.py")], input=json.dumps(cfg),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"nanoGCG failed (is it installed in {args.nanogcg_python}? see the docstring):\n"
                 f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rescore(search: gcg.GCG, tokenizer, suffix: str) -> float | None:
    """Our exact target CE of another suffix string on the same prompt (None if it is not the same length)."""
    ids = gcg.encode(tokenizer, suffix, search.suffix.device)
    if len(ids) != len(search.suffix):
        return None
    with torch.no_grad():
        return search._score(ids[None], torch.zeros(1, dtype=torch.long), search._extend_kv(ids))[0].item()


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    ours = result["ours"]["losses"]
    ax.plot(range(len(ours)), ours, marker="o", label="ours (best so far)")
    for mode, run in result["nanogcg"].items():
        theirs = run["losses"]
        ax.plot(range(1, len(theirs) + 1), [min(theirs[:i + 1]) for i in range(len(theirs))], ls="--",
                marker="s", label=f"nanoGCG, {mode} (best so far)")
    ax.set(xlabel="step", ylabel="target cross-entropy",
           title=f"GCG, {result['model']}, width {result['search_width']}, top-{result['topk']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    args = parse()
    row = data.load_prompts("advbench")[args.prompt_index]
    model, tokenizer = models.load_model(args.model, args.dtype, args.device, args.seed)
    load = os.getloadavg()[0]
    ours = run_ours(args, model, tokenizer, row["prompt"], row["target"])
    with tempfile.TemporaryDirectory(prefix="es2-bench-gcg-") as tmp:
        folder = weights_dir(args, model, tokenizer, Path(tmp))
        theirs = {mode: run_nanogcg(args, folder, tokenizer.chat_template, row["prompt"], row["target"], MODES[mode])
                  for mode in args.nanogcg_modes}
    search = ours.pop("search")
    for run in theirs.values():
        run["best_string_rescored"] = rescore(search, tokenizer, run["best_string"])
    per_step = {"ours": statistics.median(ours["step_s"])}
    per_step.update({f"nanogcg {mode}": statistics.median(run["step_s"]) for mode, run in theirs.items()})
    result = {
        "model": args.model, "dtype": args.dtype, "device": str(models.resolve_device(args.device)),
        "threads": torch.get_num_threads(), "prompt": row["prompt"], "target": row["target"], "steps": args.steps,
        "search_width": args.search_width, "topk": args.topk, "batch_size": args.batch_size,
        "nanogcg_batch_size": args.nanogcg_batch_size,
        "suffix_tokens": args.suffix_tokens, "seed": args.seed,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "median_step_s": per_step,
        "speedup": {mode: per_step[f"nanogcg {mode}"] / per_step["ours"] for mode in theirs},
        "final_best_loss": {"ours": ours["losses"][-1]} | {f"nanogcg {m}": min(r["losses"]) for m, r in theirs.items()},
        "ours": ours, "nanogcg": theirs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"model {args.model} ({args.dtype}, {result['device']}, {result['threads']} threads), "
          f"{args.steps} steps, width {args.search_width}, top-{args.topk}, batch {args.batch_size} "
          f"(nanoGCG: {args.nanogcg_batch_size or args.search_width})")
    print("loss ours (best so far)      ", " ".join(f"{x:.3f}" for x in ours["losses"]))
    for mode, run in theirs.items():
        print(f"s/step ours {per_step['ours']:.2f}  nanoGCG {mode} {per_step[f'nanogcg {mode}']:.2f}  ->  "
              f"{result['speedup'][mode]:.2f}x faster")
        print(f"loss nanoGCG {mode} (per step)", " ".join(f"{x:.3f}" for x in run["losses"]),
              f"| its best suffix re-scored by ours: {run['best_string_rescored']}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    mismatched = {mode: run["best_string_rescored"] for mode, run in theirs.items()
                  if run["best_string_rescored"] is not None
                  and abs(run["best_string_rescored"] - min(run["losses"])) > LOSS_TOLERANCE}
    if mismatched:
        sys.exit(f"nanoGCG's best loss and our score of its best suffix differ by more than {LOSS_TOLERANCE} "
                 f"({mismatched}): the two runs did not score the same model and prompt, so the ratio is void")


if __name__ == "__main__":
    main()
