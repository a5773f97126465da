"""Benchmark: the logit-level refusal screen (`refusal_screen`, one forward per prompt) against generate-and-judge
(greedy responses judged by the keyword judge): prompts per second of each, and the screen's AUROC and accuracy
against the judged verdicts on held-out prompts (docs/architecture.md, 'Speed').

The screen is fitted on its own prompts (AdvBench and Alpaca rows after the evaluated ones) and evaluated on the
first `--n-harmful` AdvBench and `--n-harmless` Alpaca prompts; generate-and-judge uses `decoding.greedy` with the
verdict stop (exact for the keyword judge's verdict). With `--adapter` the ES2 model is measured too.

    python bench/refusal_screen.py --adapter runs/default/02_es2_training/adapter
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

from es2_lib import adapters, data, decoding, judges, models, refusal_screen  # noqa: E402
from es2_lib.runs import write_json  # noqa: E402


def judged(model, tokenizer, prompts: list[str], args) -> tuple[float, list[str], list[bool]]:
    start = time.perf_counter()
    responses = decoding.greedy(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, stop=judges.is_refusal)
    return time.perf_counter() - start, responses, [judges.is_refusal(r) for r in responses]


def measure(model, tokenizer, fit_prompts: list[str], eval_prompts: list[str], args) -> dict:
    _, fit_responses, fit_refused = judged(model, tokenizer, fit_prompts, args)
    screen = refusal_screen.fit(tokenizer, refusal_screen.first_token_logprobs(model, tokenizer, fit_prompts,
                                                                               args.batch_size),
                                fit_responses, fit_refused)
    judge_seconds, _, refused = judged(model, tokenizer, eval_prompts, args)
    start = time.perf_counter()
    logprobs = refusal_screen.first_token_logprobs(model, tokenizer, eval_prompts, args.batch_size)
    screen_seconds = time.perf_counter() - start
    result = {"refusal_tokens": [tokenizer.decode([t]) for t in screen.tokens], "threshold": screen.threshold,
              "fit_prompts": len(fit_prompts), "fit_refused": sum(fit_refused) / len(fit_refused),
              "seconds": {"generate_and_judge": judge_seconds, "screen": screen_seconds},
              "speedup": judge_seconds / screen_seconds, **refusal_screen.agreement(screen, logprobs, refused)}
    print(f"  tokens {result['refusal_tokens']}, threshold {screen.threshold:.2f}; judge {judge_seconds:.1f} s, "
          f"screen {screen_seconds:.1f} s ({result['speedup']:.1f}x); AUROC {result['auroc']}, accuracy "
          f"{result['accuracy']:.3f} on {result['n']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--adapter", help="also measure the ES2 model with this adapter (stage 02's adapter folder)")
    parser.add_argument("--n-harmful", type=int, default=100)
    parser.add_argument("--n-harmless", type=int, default=50)
    parser.add_argument("--n-fit", type=int, default=40, help="fitting prompts per class")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench/results/refusal_screen.json"))
    args = parser.parse_args()

    model, tokenizer = models.load_model(args.model, dtype=args.dtype, device=args.device)
    harmful = [r["prompt"] for r in data.load_prompts("advbench")]
    harmless = [r["prompt"] for r in data.load_prompts("alpaca")]
    eval_prompts = harmful[:args.n_harmful] + harmless[:args.n_harmless]
    fit_prompts = (harmful[args.n_harmful:args.n_harmful + args.n_fit]
                   + harmless[args.n_harmless:args.n_harmless + args.n_fit])
    report = {"model": args.model, "dtype": args.dtype, "device": args.device, "n_harmful": args.n_harmful,
              "n_harmless": args.n_harmless, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "models": {}, "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                                        "torch": torch.__version__}}
    print("base")
    report["models"]["base"] = measure(model, tokenizer, fit_prompts, eval_prompts, args)
    if args.adapter:
        print("es2")
        tuned = adapters.load_tuned(model, Path(args.adapter))
        report["models"]["es2"] = measure(tuned, tokenizer, fit_prompts, eval_prompts, args)
    write_json(Path(args.out), report)


if __name__ == "__main__":
    main()
