"""Benchmark: seconds per GCG step, es2_lib.attacks.gcg against nanoGCG, same model, prompt, target and budget.

Ours runs in this process, screened (a bfloat16 copy ranks the candidates, the model scores the shortlist) and
exact (`--ours-modes`); nanoGCG (PyPI nanogcg 0.3.0, which pins transformers <= 4.47) runs right after in a
subprocess with the Python of its own virtual environment (`--nanogcg-python`), on the same weights (the
folder the model was loaded from, or a temporary copy for random-weight specs), with its prefix cache (its
default), without it, and with its prefix cache on the weights cast to bfloat16 (`--nanogcg-modes`). All start
from the same "! ! …" suffix with the same search width, top-k, steps, seed and thread count (each with its own
batch size: ours small, to reuse more of the suffix cache; nanoGCG its default, the whole width). The script
prints the per-step seconds of each and the ratios, and the loss curves; it re-scores nanoGCG's best suffix
with our exact scorer and exits with an error when that differs from the loss nanoGCG reports in the same
dtype (then the two did not run the same model and prompt); it writes bench/results/gcg.json and gcg.png.

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

from es2_lib import data, model_cache, models  # noqa: E402
from es2_lib.attacks import gcg, prompt_search  # noqa: E402

LOSS_TOLERANCE = 1e-2  # |nanoGCG's best loss - our score of its best suffix| above this voids the comparison
MODES = {"prefix-cache": (True, None), "no-prefix-cache": (False, None),  # nanoGCG runs: use_prefix_cache, and
         "prefix-cache-bf16": (True, "bfloat16")}  # a dtype other than --dtype for the weights (None: the same)
OURS = ("screened", "exact")  # ours with a screening copy (--screen-dtype) or without


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
    ap.add_argument("--prompt-index", type=int, nargs="+", default=[0],
                    help="rows of data/advbench/harmful_behaviors.csv: every run on each, then summarised")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nanogcg-python", default=str(ROOT / ".venv-nanogcg" / "bin" / "python"),
                    help="Python of a virtual environment with nanogcg==0.3.0")
    ap.add_argument("--nanogcg-modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="nanoGCG runs: with its prefix cache (its default), with use_prefix_cache=False, and/or "
                         "with its prefix cache on the weights cast to bfloat16")
    ap.add_argument("--ours-modes", nargs="+", choices=OURS, default=list(OURS),
                    help="our runs: screened by a --screen-dtype copy, and/or exact (every candidate in --dtype)")
    ap.add_argument("--screen-dtype", default="bfloat16", choices=sorted(models.DTYPES))
    ap.add_argument("--margin", type=float, default=0.02, help="screening margin (params: gcg_screen_margin)")
    ap.add_argument("--check-screening", type=int, default=0,
                    help="extra screened steps that score every candidate both ways (does the shortlist hold the "
                         "exact best?)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gcg.json"))
    return ap.parse_args()


def weights_dir(args: argparse.Namespace, model, tokenizer, tmp: Path) -> Path:
    """A folder with the exact weights `model` has, for nanoGCG to load."""
    if args.model == "embedded":
        return model_cache.prepare_embedded(progress=False)
    if Path(args.model).is_dir() and list(Path(args.model).glob("*.safetensors")):
        return Path(args.model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def run_ours(args, model, tokenizer, prompt: str, target: str, screened: bool) -> dict:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    screen = gcg.screen_copy(model, args.screen_dtype) if screened else None
    if screened and screen is None:
        sys.exit(f"--screen-dtype {args.screen_dtype} is the model's dtype: nothing to screen with")
    search = gcg.GCG(model, tokenizer, prompt, target, args.suffix_tokens, args.topk, args.search_width,
                     args.batch_size, args.seed, screen, args.margin)
    setup = time.perf_counter() - start
    losses, step_s = [search.loss], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(search.step())
        step_s.append(time.perf_counter() - start)
    return {"losses": losses, "step_s": step_s, "setup_s": setup, "best_string": tokenizer.decode(search.suffix),
            "exactly_scored_per_step": search.verified, "search": search}


def check_screening(args, model, tokenizer, prompt: str, target: str) -> list[dict]:
    """`--check-screening` steps of a search that scores every candidate both ways and keeps the exact best: per
    step, how far the exact best's screened loss lies above the screened minimum (it is in the shortlist while
    that is <= the margin), the shortlist's size, and the spread (max - min) of the screening errors."""
    search = gcg.GCG(model, tokenizer, prompt, target, args.suffix_tokens, args.topk, args.search_width,
                     args.batch_size, args.seed, gcg.screen_copy(model, args.screen_dtype), args.margin)
    rows = []
    for _ in range(args.check_screening):
        with torch.no_grad():
            candidates = search._sample(search.grad)
            candidates = candidates[search._retokenises(candidates)]
            positions = search._positions(candidates)
            screened = search._score(search.screen, candidates, positions, search.kv_screen, search.likely)
            exact = search._score(search.exact, candidates, positions, search.kv)
        best, error, shortlist = int(exact.argmin()), screened - exact, search._shortlist(screened)
        rows.append({"candidates": len(candidates), "shortlist": int(shortlist.sum()),
                     "exact_best_above_screened_min": (screened[best] - screened.min()).item(),
                     "same_pick_as_exact": bool(shortlist[best]) or exact[best].item() >= search.loss,
                     "error_spread": (error.max() - error.min()).item()})
        if exact[best].item() < search.loss:
            search._move_if_better(candidates[best])
    return rows


def run_nanogcg(args, model_dir: Path, chat_template: str, prompt: str, target: str, mode: str) -> dict:
    prefix_cache, dtype = MODES[mode]
    cfg = {"model_dir": str(model_dir), "chat_template": chat_template, "dtype": dtype or args.dtype,
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
    ids = prompt_search.encode(tokenizer, suffix, search.suffix.device)
    if len(ids) != len(search.suffix):
        return None
    return search._gradient(ids)[0]


def plot(result: dict, path: Path) -> None:
    """The best-so-far loss curves of every run, one panel per prompt."""
    import matplotlib
    matplotlib.use("agg")
    from matplotlib.figure import Figure
    rows = result["prompts"]
    fig = Figure(figsize=(4.2 * len(rows), 4))
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows):
        for mode, run in row["ours"].items():  # distinct markers: the two coincide while screening misses nothing
            ax.plot(range(len(run["losses"])), run["losses"], marker="o" if mode == "screened" else "x",
                    ms=7 if mode == "screened" else 5, label=f"ours, {mode}")
        for mode, run in row["nanogcg"].items():
            theirs = run["losses"]
            ax.plot(range(1, len(theirs) + 1), [min(theirs[:i + 1]) for i in range(len(theirs))], ls="--",
                    marker="s", label=f"nanoGCG, {mode}{' (its bf16 losses)' if MODES[mode][1] else ''}")
        ax.set(xlabel="step", title=f"AdvBench row {row['prompt_index']}")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("target cross-entropy (best so far)")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"GCG, {result['model']}, width {result['search_width']}, top-{result['topk']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def compare(args, model, tokenizer, index: int, folder: Path) -> dict:
    """Every run of ours and of nanoGCG on AdvBench row `index`."""
    row = data.load_prompts("advbench")[index]
    ours = {mode: run_ours(args, model, tokenizer, row["prompt"], row["target"], mode == "screened")
            for mode in args.ours_modes}
    check = check_screening(args, model, tokenizer, row["prompt"], row["target"]) if args.check_screening else []
    theirs = {mode: run_nanogcg(args, folder, tokenizer.chat_template, row["prompt"], row["target"], mode)
              for mode in args.nanogcg_modes}
    search = [run.pop("search") for run in ours.values()][0]
    for run in theirs.values():
        run["best_string_rescored"] = rescore(search, tokenizer, run["best_string"])
    per_step = {f"ours {mode}": statistics.median(run["step_s"]) for mode, run in ours.items()}
    per_step |= {f"nanogcg {mode}": statistics.median(run["step_s"]) for mode, run in theirs.items()}
    return {"prompt_index": index, "prompt": row["prompt"], "target": row["target"], "median_step_s": per_step,
            "final_best_loss": {f"ours {m}": r["losses"][-1] for m, r in ours.items()}
            | {f"nanogcg {m}": min(r["losses"]) for m, r in theirs.items()},
            "ours": ours, "nanogcg": theirs, "screening_check": check}


def summarise(rows: list[dict], ours: list[str], theirs: list[str]) -> dict:
    """Across prompts: the median seconds per step over every step of every prompt, each ratio of ours to
    nanoGCG from those medians (and per prompt), and the mean final best loss of each run."""
    steps = {f"ours {m}": [t for r in rows for t in r["ours"][m]["step_s"]] for m in ours}
    steps |= {f"nanogcg {m}": [t for r in rows for t in r["nanogcg"][m]["step_s"]] for m in theirs}
    median = {name: statistics.median(times) for name, times in steps.items()}
    pairs = [(f"ours {o}", f"nanogcg {t}") for o in ours for t in theirs]
    return {"median_step_s": median,
            "speedup": {f"{o} vs {t}": median[t] / median[o] for o, t in pairs},
            "speedup_per_prompt": {f"{o} vs {t}": [r["median_step_s"][t] / r["median_step_s"][o] for r in rows]
                                   for o, t in pairs},
            "mean_final_best_loss": {name: statistics.mean(r["final_best_loss"][name] for r in rows)
                                     for name in median}}


def main() -> None:
    args = parse()
    model, tokenizer = models.load_model(args.model, args.dtype, args.device, args.seed)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="es2-bench-gcg-") as tmp:
        folder = weights_dir(args, model, tokenizer, Path(tmp))
        rows = [compare(args, model, tokenizer, index, folder) for index in args.prompt_index]
    result = {
        "model": args.model, "dtype": args.dtype, "device": str(models.resolve_device(args.device)),
        "threads": torch.get_num_threads(), "steps": args.steps, "search_width": args.search_width,
        "topk": args.topk, "batch_size": args.batch_size, "nanogcg_batch_size": args.nanogcg_batch_size,
        "screen_dtype": args.screen_dtype, "margin": args.margin, "suffix_tokens": args.suffix_tokens,
        "seed": args.seed, "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "summary": summarise(rows, args.ours_modes, args.nanogcg_modes), "prompts": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"model {args.model} ({args.dtype}, {result['device']}, {result['threads']} threads), "
          f"{args.steps} steps, width {args.search_width}, top-{args.topk}, batch {args.batch_size} "
          f"(nanoGCG: {args.nanogcg_batch_size or args.search_width}), AdvBench rows {args.prompt_index}")
    for row in rows:
        print(f"-- row {row['prompt_index']}")
        for mode, run in row["ours"].items():
            print(f"ours {mode}: {row['median_step_s'][f'ours {mode}']:.2f} s/step; loss (best so far)",
                  " ".join(f"{x:.3f}" for x in run["losses"]), "| exactly scored per step:",
                  run["exactly_scored_per_step"])
        for mode, run in row["nanogcg"].items():
            print(f"nanoGCG {mode}: {row['median_step_s'][f'nanogcg {mode}']:.2f} s/step; loss (per step)",
                  " ".join(f"{x:.3f}" for x in run["losses"]),
                  f"| its best suffix re-scored by ours: {run['best_string_rescored']}")
        check = row["screening_check"]
        if check:
            print(f"screening check ({len(check)} steps): exact best above the screened minimum by at most "
                  f"{max(r['exact_best_above_screened_min'] for r in check):.4f} (margin {args.margin}); same pick "
                  f"as exact GCG {sum(r['same_pick_as_exact'] for r in check)}/{len(check)}; shortlist sizes "
                  f"{[r['shortlist'] for r in check]}; error spread at most "
                  f"{max(r['error_spread'] for r in check):.4f}")
    summary = result["summary"]
    for name, seconds in summary["median_step_s"].items():
        print(f"{name}: median {seconds:.2f} s/step, mean final best loss {summary['mean_final_best_loss'][name]:.3f}")
    for name, ratio in summary["speedup"].items():
        print(f"{name}: {ratio:.2f}x faster per step (per prompt: "
              f"{' '.join(f'{r:.2f}' for r in summary['speedup_per_prompt'][name])})")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    mismatched = {(row["prompt_index"], mode): run["best_string_rescored"] for row in rows
                  for mode, run in row["nanogcg"].items()
                  if MODES[mode][1] in (None, args.dtype) and run["best_string_rescored"] is not None
                  and abs(run["best_string_rescored"] - min(run["losses"])) > LOSS_TOLERANCE}
    if mismatched:
        sys.exit(f"nanoGCG's best loss and our score of its best suffix differ by more than {LOSS_TOLERANCE} "
                 f"({mismatched}): the two runs did not score the same model and prompt, so the ratio is void")


if __name__ == "__main__":
    main()
