"""Benchmark: judged responses per second of continuous-batching greedy decoding (`decoding.greedy`) against
`generation.generate` (`model.generate` on length-sorted batches), same prompts, batch size and token budget
(docs/architecture.md, 'Speed').

Three methods on the same AdvBench prompts, one after the other in one process after a warm-up batch:
`generate`; `greedy` (rows leave at EOS, waiting prompts take their place); `greedy` stopping a row once the
keyword judge's verdict can no longer change (a refusal phrase has appeared: the verdict is then "refused" at any
length). The script reports seconds, responses per second and ratios, the share of `greedy`'s responses identical
to `generate`'s, and how often the judge's verdict agrees. With `--adapter` the ES2 model is measured too.

    python bench/decoding.py                                              # embedded model, 100 prompts
    python bench/decoding.py --adapter runs/default/02_es2_training/adapter
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from es2_lib import adapters, data, decoding, judges, models  # noqa: E402
from es2_lib.generation import generate  # noqa: E402
from es2_lib.runs import write_json  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> dict:
    """The three methods on one model: seconds, responses, and their agreement."""
    methods = {
        "generate": lambda: generate(model, tokenizer, prompts, max_new_tokens, batch_size),
        "greedy": lambda: decoding.greedy(model, tokenizer, prompts, max_new_tokens, batch_size),
        "greedy_verdict_stop": lambda: decoding.greedy(model, tokenizer, prompts, max_new_tokens, batch_size,
                                                       stop=judges.is_refusal),
    }
    generate(model, tokenizer, prompts[:batch_size], 4, batch_size)  # warm-up
    seconds, responses = {}, {}
    for name, fn in methods.items():
        seconds[name], responses[name] = timed(fn)
        print(f"  {name:<22}{seconds[name]:8.1f} s  {len(prompts) / seconds[name]:6.2f} responses/s", flush=True)
    verdicts = {name: [judges.is_refusal(r) for r in rs] for name, rs in responses.items()}
    same = [a == b for a, b in zip(responses["generate"], responses["greedy"])]
    return {
        "seconds": seconds,
        "responses_per_second": {name: len(prompts) / s for name, s in seconds.items()},
        "speedup_vs_generate": {name: seconds["generate"] / s for name, s in seconds.items()},
        "identical_to_generate": sum(same) / len(same),
        "differing": [{"prompt": p, "generate": a, "greedy": b} for p, a, b, s in
                      zip(prompts, responses["generate"], responses["greedy"], same) if not s],
        "verdict_agreement_with_generate": {name: sum(a == b for a, b in zip(verdicts["generate"], v)) / len(v)
                                            for name, v in verdicts.items()},
        "refused_share": {name: sum(v) / len(v) for name, v in verdicts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model spec (embedded, tiny, random:<dir>, folder, hub id)")
    parser.add_argument("--adapter", help="also measure the ES2 model with this adapter (stage 02's adapter folder)")
    parser.add_argument("--n", type=int, default=100, help="number of AdvBench prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench/results/decoding.json"))
    args = parser.parse_args()

    model, tokenizer = models.load_model(args.model, dtype=args.dtype, device=args.device)
    prompts = [row["prompt"] for row in data.load_prompts("advbench")[:args.n]]
    report = {"model": args.model, "dtype": args.dtype, "device": args.device, "n_prompts": len(prompts),
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "models": {},
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}}
    print(f"{args.model}, {len(prompts)} AdvBench prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"{args.dtype} on {args.device}")
    print("base")
    report["models"]["base"] = measure(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    if args.adapter:
        print("es2")
        tuned = adapters.load_tuned(model, Path(args.adapter))
        report["models"]["es2"] = measure(tuned, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    for which, m in report["models"].items():
        print(f"{which}: greedy {m['speedup_vs_generate']['greedy']:.2f}x, with verdict stop "
              f"{m['speedup_vs_generate']['greedy_verdict_stop']:.2f}x; identical to generate "
              f"{m['identical_to_generate']:.0%}; verdicts agree {m['verdict_agreement_with_generate']}")
    write_json(Path(args.out), report)


if __name__ == "__main__":
    main()
