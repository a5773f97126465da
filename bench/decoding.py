"""Benchmark: judged responses per second of the library's generation (`generation.generate`: continuous batching,
the chat head's cache, rows that stop at the verdict, perplexity only where the verdict needs it) against
`model.generate` on length-sorted batches judged whole, same prompts, batch size and token budget; and the
logit-level refusal screen against generate-and-judge (docs/architecture.md, 'Speed').

On the first `--n` AdvBench prompts, per model (base, and the ES2 model with `--adapter`), one after the other in
one process after a warm-up batch:
- `generate`: `model.generate` (the library's path before continuous batching), every response judged whole:
  keyword judges, and its perplexity under the base network (the coherence judge) for every response;
- `library`: `evaluate.generate_and_judge` (`decoding.greedy` stopped at the verdict, judged by `evaluate.judge`'s
  rules; for the base model the perplexities come from the decoding pass itself), checked against a second forward;
- `library_bfloat16` (base only, with `--bf16`): the same on a bfloat16 copy of the model.
It reports seconds, judged responses per second and ratios; how many library responses equal `generate`'s (a
response stopped at its verdict must be a prefix of `generate`'s) and, for each that differs, the logit gap
between the two best tokens where they part (from `model.generate` on that prompt alone, float32); and whether
the verdicts agree. Then the refusal screen: fitted on other AdvBench and Alpaca prompts (`--n-fit` each), scored
on the `--n` AdvBench plus `--n-harmless` Alpaca prompts against their judged verdicts (AUROC, accuracy at the
fitted threshold), timed against generate-and-judge on the same prompts (and, with `--bf16`, the screen on a bfloat16
copy, fitted on its own log-probs).

    python bench/decoding.py --adapter runs/default/02_es2_training/adapter --bf16
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from es2_lib import adapters, data, evaluate, judges, models, refusal_screen  # noqa: E402
from es2_lib.batching import length_sorted  # noqa: E402
from es2_lib.generation import generate  # noqa: E402
from es2_lib.runs import write_json  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def hf_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy responses by `model.generate` on length-sorted left-padded batches (the obvious baseline)."""
    texts = [models.chat_prompt(tokenizer, p) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    responses = [""] * len(prompts)
    with torch.inference_mode():
        for batch in length_sorted(lengths, batch_size):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            for i, text in zip(batch, tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                             skip_special_tokens=True)):
                responses[i] = text.strip()
    return responses


def parting_gap(model, tokenizer, prompt: str, a: str, b: str, max_new_tokens: int) -> float | None:
    """The logit gap between the best and second-best token where responses `a` and `b` part, on the trajectory
    of `model.generate` for `prompt` alone (None if that trajectory is neither)."""
    enc = tokenizer(models.chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
    common = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    for step in range(len(new)):
        if len(tokenizer.decode(new[:step + 1], skip_special_tokens=True).strip()) > common:
            top = out.logits[step][0].float().topk(2).values
            return float(top[0] - top[1])
    return None


def compare(model, tokenizer, prompts, reference: list[str], other: list[str], max_new_tokens: int) -> dict:
    """How many `other` responses equal (or, stopped at the verdict, start) the `reference` ones; gaps where not."""
    same = [r == o or (judges.settled(o) and r.startswith(o)) for r, o in zip(reference, other)]
    differing = [{"prompt": p, "generate": r, "library": o,
                  "logit_gap": parting_gap(model, tokenizer, p, r, o, max_new_tokens)}
                 for p, r, o, s in zip(prompts, reference, other, same) if not s]
    verdicts = [judges.is_refusal(r) == judges.is_refusal(o) and judges.is_refusal(r, "jailbreakbench")
                == judges.is_refusal(o, "jailbreakbench") for r, o in zip(reference, other)]
    return {"identical": sum(same), "of": len(same), "differing": differing, "verdicts_agree": sum(verdicts)}


def measure(model, tokenizer, prompts: list[str], args, is_base: bool, bf16_model=None) -> dict:
    """The methods on one model: seconds, judged responses per second, agreement."""
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    ppl = evaluate.response_perplexity if is_base else evaluate.base_perplexity

    def old():
        responses = hf_generate(model, tokenizer, prompts, **gen)
        return responses, evaluate.judge_responses(responses, ppl(model, tokenizer, prompts, responses,
                                                                  args.batch_size), args.incoherent_ppl)

    def new(m):
        return evaluate.generate_and_judge(m, tokenizer, prompts, args.max_new_tokens, args.batch_size,
                                           args.incoherent_ppl, is_base)

    methods = {"generate": old, "library": lambda: new(model)}
    if bf16_model is not None:
        methods["library_bfloat16"] = lambda: new(bf16_model)
    hf_generate(model, tokenizer, prompts[:args.batch_size], 4, args.batch_size)  # warm-up
    seconds, out = {}, {}
    for name, fn in methods.items():
        seconds[name], out[name] = timed(fn)
        print(f"  {name:<18}{seconds[name]:8.1f} s  {len(prompts) / seconds[name]:6.2f} judged responses/s",
              flush=True)
    reference = out["generate"][0]
    result = {"seconds": seconds, "judged_per_second": {k: len(prompts) / s for k, s in seconds.items()},
              "speedup_vs_generate": {k: seconds["generate"] / s for k, s in seconds.items()},
              "refused": {k: sum(r["refused"] for r in rows) / len(rows) for k, (_, rows) in out.items()},
              "agreement": {k: compare(model, tokenizer, prompts, reference, responses, args.max_new_tokens)
                            for k, (responses, _) in out.items() if k != "generate"}}
    if is_base:  # the decoding pass's perplexities against a second forward over the re-tokenised text
        rows = out["library"][1]
        need = [i for i, r in enumerate(rows) if not r["refused"]]
        forward = evaluate.response_perplexity(model, tokenizer, [prompts[i] for i in need],
                                               [out["library"][0][i] for i in need], args.batch_size)
        pairs = [(rows[i]["perplexity"], f) for i, f in zip(need, forward)
                 if math.isfinite(rows[i]["perplexity"]) and math.isfinite(f)]  # NaN: an empty response
        rel = [abs(free / f - 1) for free, f in pairs]
        result["free_perplexity"] = {
            "n": len(pairs), "max_relative_difference": max(rel, default=0.0),
            "within_1e-3": sum(r < 1e-3 for r in rel),
            "incoherent_verdicts_agree": sum((free > args.incoherent_ppl) == (f > args.incoherent_ppl)
                                             for free, f in pairs)}
        print(f"  perplexity from the decoding pass vs a second forward: {result['free_perplexity']}", flush=True)
    for k, a in result["agreement"].items():
        print(f"  {k}: {a['identical']}/{a['of']} responses identical to generate's, verdicts agree "
              f"{a['verdicts_agree']}/{a['of']}, gaps where they part {[d['logit_gap'] for d in a['differing']]}")
    return result, out["library"][0]


def screen(model, tokenizer, harmful: list[str], harmful_responses: list[str], seconds: dict,
           harmless: list[str], fit_prompts: list[str], args, is_base: bool, bf16_model=None) -> dict:
    """The refusal screen's agreement with generate-and-judge (the library path; on the harmful prompts its
    responses from `measure`, whose `seconds` per method time generate-and-judge there), and its speed on the same
    prompts against the library path (harmful and harmless prompts) and against `model.generate`-and-judge
    (harmful prompts, the ones `measure` timed it on); with `bf16_model` also the screen on that bfloat16 copy,
    fitted on its own log-probs and checked against the float32 verdicts."""
    fit_responses = generate(model, tokenizer, fit_prompts, args.max_new_tokens, args.batch_size, until_verdict=True)
    fit_refused = judges.refusals(fit_responses)
    judge_s, (harmless_responses, _) = timed(lambda: evaluate.generate_and_judge(
        model, tokenizer, harmless, args.max_new_tokens, args.batch_size, args.incoherent_ppl, is_base))
    refused = judges.refusals(harmful_responses + harmless_responses)
    library_s = judge_s + seconds["library"]
    result = {"fit_prompts": len(fit_prompts), "generate_and_judge_s": {"library": library_s,
                                                                         "generate_harmful": seconds["generate"]}}
    for name, m in {"float32": model, "bfloat16": bf16_model}.items():
        if m is None:
            continue
        fitted = refusal_screen.fit(tokenizer, refusal_screen.first_token_logprobs(m, tokenizer, fit_prompts,
                                                                                   args.batch_size),
                                    fit_responses, fit_refused)
        harmful_s, on_harmful = timed(lambda: refusal_screen.first_token_logprobs(m, tokenizer, harmful,
                                                                                  args.batch_size))
        harmless_s, on_harmless = timed(lambda: refusal_screen.first_token_logprobs(m, tokenizer, harmless,
                                                                                    args.batch_size))
        logprobs = torch.cat([on_harmful, on_harmless])
        result[name] = {"refusal_tokens": [tokenizer.decode([t]) for t in fitted.tokens],
                        "threshold": fitted.threshold, "seconds": harmful_s + harmless_s,
                        "speedup_vs_library": library_s / (harmful_s + harmless_s),
                        "speedup_vs_generate": seconds["generate"] / harmful_s,
                        **refusal_screen.agreement(fitted, logprobs, refused),
                        "harmful_only": refusal_screen.agreement(fitted, on_harmful, refused[:len(harmful)])}
        r = result[name]
        print(f"  screen {name}: tokens {r['refusal_tokens'][:6]}, {r['seconds']:.1f} s: "
              f"{r['speedup_vs_library']:.1f}x the library's generate-and-judge ({library_s:.1f} s), "
              f"{r['speedup_vs_generate']:.1f}x model.generate's on the harmful prompts; AUROC {r['auroc']}, "
              f"accuracy {r['accuracy']:.3f} on {r['n']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model spec (embedded, tiny, random:<dir>, folder, hub id)")
    parser.add_argument("--adapter", help="also measure the ES2 model with this adapter (stage 02's adapter folder)")
    parser.add_argument("--n", type=int, default=100, help="AdvBench prompts")
    parser.add_argument("--n-harmless", type=int, default=50, help="Alpaca prompts beside them for the screen")
    parser.add_argument("--n-fit", type=int, default=40, help="screen fitting prompts per class")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--incoherent-ppl", type=float, default=100.0)
    parser.add_argument("--bf16", action="store_true",
                        help="also the library path on a bfloat16 copy (base) and the screen on one (base and ES2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench/results/decoding.json"))
    args = parser.parse_args()

    model, tokenizer = models.load_model(args.model, dtype="float32", device=args.device)
    bf16 = models.load_model(args.model, dtype="bfloat16", device=args.device)[0] if args.bf16 else None
    advbench = [r["prompt"] for r in data.load_prompts("advbench")]
    alpaca = [r["prompt"] for r in data.load_prompts("alpaca")]
    prompts, harmless = advbench[:args.n], alpaca[:args.n_harmless]
    fit_prompts = advbench[args.n:args.n + args.n_fit] + alpaca[args.n_harmless:args.n_harmless + args.n_fit]
    report = {"model": args.model, "device": args.device, "n_prompts": len(prompts), "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "models": {},
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}}
    print(f"{args.model}, {len(prompts)} AdvBench prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"on {args.device}")
    for which in ["base", "es2"] if args.adapter else ["base"]:
        print(which)  # the adapter is loaded after the base model is measured (peft wraps the base in place)
        m, is_base = (model, True) if which == "base" else (adapters.load_tuned(model, Path(args.adapter)), False)
        m_bf16 = bf16 if which == "base" or bf16 is None else adapters.load_tuned(bf16, Path(args.adapter))
        result, responses = measure(m, tokenizer, prompts, args, is_base, bf16 if which == "base" else None)
        result["screen"] = screen(m, tokenizer, prompts, responses, result["seconds"], harmless, fit_prompts, args,
                                  is_base, m_bf16)
        report["models"][which] = result
        write_json(Path(args.out), report)  # what is measured so far survives a crash


if __name__ == "__main__":
    main()
