"""Benchmark: last-prompt-token states by `representations.last_token_states` (stops after the deepest requested
layer, no lm_head) against the obvious baseline, a full forward with `output_hidden_states=True` (docs/architecture.md, 'Speed').

Both run on the same prompts, in the same length-sorted batches, under inference_mode, interleaved in one process
after a warm-up; the script reports median seconds, the ratio, and the largest difference between the two at layers
< L (HF's `hidden_states[L]` is after the final norm, ours is the raw block output, so layer L is not compared).

    python bench/extraction.py                                   # embedded model, CPU, float32
    python bench/extraction.py --model random:<dir> --device cuda --dtype bfloat16 --n 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from es2_lib import batching, hooks, models, representations  # noqa: E402
from es2_lib.runs import write_json  # noqa: E402

ADVBENCH = [ROOT / "data/advbench/harmful_behaviors.csv", ROOT.parent / "shared/data/advbench/harmful_behaviors.csv"]


def read_prompts(n: int) -> list[str]:
    path = next(p for p in ADVBENCH if p.is_file())
    with open(path, newline="") as f:
        return [row["goal"] for row in csv.DictReader(f)][:n]


def full_forward_states(model, tokenizer, prompts: list[str], layers: list[int], batch_size: int) -> torch.Tensor:
    """Baseline: the same batching as `last_token_states`, but the plain forward (all blocks, norm, lm_head)."""
    device = model.get_input_embeddings().weight.device
    texts = [models.chat_prompt(tokenizer, prompt) for prompt in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    states = torch.empty(len(prompts), len(layers), model.config.hidden_size)  # [n, layers, hidden]
    with torch.inference_mode():
        for index in batching.length_sorted(lengths, batch_size):
            batch = representations.encode_prompts(tokenizer, [prompts[i] for i in index], device)
            out = model(**batch, position_ids=hooks.position_ids(batch["attention_mask"]),
                        output_hidden_states=True, use_cache=False)
            states[index] = torch.stack([out.hidden_states[layer][:, -1] for layer in layers], 1).float().cpu()
    return states


def timed(fn) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model spec (embedded, tiny, random:<dir>, folder, hub id)")
    parser.add_argument("--n", type=int, default=16, help="number of AdvBench prompts")
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12], help="layers to read (0..L)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method after one warm-up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/extraction.json"))
    args = parser.parse_args()

    model, tokenizer = models.load_model(args.model, dtype=args.dtype, device=args.device)
    layers = hooks.check_layers(model, args.layers)
    n_layers = models.num_layers(model)
    prompts = read_prompts(args.n)
    methods = {
        "last_token_states": lambda: representations.last_token_states(model, tokenizer, prompts, layers,
                                                                       args.batch_size),
        "full_forward": lambda: full_forward_states(model, tokenizer, prompts, layers, args.batch_size),
    }
    results = {name: fn() for name, fn in methods.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.repeats):  # interleaved, alternating which goes first
        for name in (list(methods) if repeat % 2 == 0 else list(methods)[::-1]):
            elapsed, results[name] = timed(methods[name])
            seconds[name].append(elapsed)

    compared = [i for i, layer in enumerate(layers) if layer < n_layers]
    ours, full = results["last_token_states"][:, compared], results["full_forward"][:, compared]
    max_abs = float((ours - full).abs().max()) if compared else None
    scale = float(full.abs().max()) if compared else None
    tolerance = 1e-5 if args.dtype == "float32" else 1e-2  # relative to the largest state entry
    median = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "model": args.model, "model_type": model.config.model_type, "num_hidden_layers": n_layers,
        "device": str(args.device), "dtype": args.dtype, "n_prompts": len(prompts), "batch_size": args.batch_size,
        "layers": layers, "repeats": args.repeats, "seconds": seconds, "median_seconds": median,
        "speedup": median["full_forward"] / median["last_token_states"],
        "compared_layers": [layers[i] for i in compared], "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / scale if compared else None,
        "same_states": (max_abs / scale <= tolerance) if compared else None,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
    }
    print(f"{args.model} ({n_layers} layers), {len(prompts)} prompts, batch {args.batch_size}, layers {layers}, "
          f"{args.dtype} on {args.device}, median of {args.repeats}")
    print(f"{'method':<20}{'median s':>10}{'runs s':>30}")
    for name, values in seconds.items():
        print(f"{name:<20}{median[name]:>10.3f}{', '.join(f'{v:.2f}' for v in values):>30}")
    print(f"speedup full_forward / last_token_states: {report['speedup']:.2f}x")
    print(f"max |diff| at layers {report['compared_layers']}: {max_abs} (relative {report['max_rel_diff']}), "
          f"same: {report['same_states']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    if report["same_states"] is False:
        sys.exit("last_token_states and the full forward disagree")


if __name__ == "__main__":
    main()
