"""Benchmark: ES2 training throughput (prompt tokens per second) of `trainer.ES2Trainer.train_step` against the
obvious baseline step (docs/architecture.md, 'Speed').

Ours: one forward for the harmful and harmless batch together, the lm_head only at the last prompt position, and the
base model's next-token distributions computed once before training (the base weights are frozen), so a step has
one forward and one backward. Baseline: the step a user would write with peft: `model(**batch,
output_hidden_states=True)` (logits over the whole vocabulary at every position) and, for the KL, a second forward
of the harmless batch under `with model.disable_adapter(), torch.no_grad()`. Both use the same LoRA model, loss,
optimiser and batches, interleaved in one process after a warm-up step each; the KL guard is off (threshold inf).
The retain term is `kl` (KL to the base on the harmful prompts, which the baseline reads from its second forward):
the refusal-CE retain of the default params adds the same extra forward and backward to any implementation.

    python bench/es2_throughput.py                         # embedded model, CPU float32, 3 timed steps each
    python bench/es2_throughput.py --model random:<dir> --device cuda --dtype bfloat16 --batch-size 16 --steps 10
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

from es2_lib import hooks, models, objective, params, representations  # noqa: E402
from es2_lib.trainer import ES2Trainer, TrainConfig  # noqa: E402
from es2_lib.runs import write_json  # noqa: E402


def read_prompts(path: Path, column: str, n: int) -> list[str]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [row[column] for row in csv.DictReader(f)][:n]
    import json
    return [row[column] for row in json.loads(path.read_text())][:n]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def baseline_step(trainer: ES2Trainer, step: int) -> int:
    """The naive step: full-vocabulary logits at every position, and a second (base) forward per step."""
    model, device = trainer.model, trainer.device
    h_idx = trainer._indices(len(trainer.harmful), step, 0)
    s_idx = trainer._indices(len(trainer.harmless), step, 1)
    batch = representations.encode_prompts(
        trainer.tokenizer, [trainer.harmful[i] for i in h_idx] + [trainer.harmless[i] for i in s_idx], device)
    positions = hooks.position_ids(batch["attention_mask"])
    model.train()
    out = model(**batch, position_ids=positions, output_hidden_states=True, use_cache=False)
    states = torch.stack([out.hidden_states[layer][:, -1] for layer in trainer.layers], 1)  # [2b, layers, hidden]
    logp = out.logits[:, -1].float().log_softmax(-1)  # [2b, vocab]
    b = len(h_idx)
    with model.disable_adapter(), torch.no_grad():
        base = model(**batch, position_ids=positions, use_cache=False).logits[:, -1].float().log_softmax(-1)
    retain = objective.kl_divergence(base[:b], logp[:b]).mean()  # the bench runs the es2_retain arm, retain "kl"
    c = trainer.config
    kl = objective.harmless_kl(base[b:], logp[b:], c.es2_kl).mean()
    loss, _ = objective.es2_loss(states[:b], states[b:], trainer.scale, kl, retain, distance=c.es2_distance,
                                 margin=c.es2_margin, lambda_kl=c.es2_lambda_kl, retain_weight=c.es2_retain_weight)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    model.eval()
    return int(batch["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model spec (embedded, tiny, random:<dir>, folder, hub id)")
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="ES2 layers (default: 3 and L)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per class per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each method after one warm-up step")
    parser.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    parser.add_argument("--out", default=str(ROOT / "bench/results/es2_throughput.json"))
    args = parser.parse_args()

    model, tokenizer = models.load_model(args.model, dtype=args.dtype, device=args.device)
    n_layers = models.num_layers(model)
    layers = args.layers if args.layers else [min(3, n_layers), n_layers]
    n = args.batch_size * (args.steps + 1)
    harmful = read_prompts(ROOT / "data/advbench/harmful_behaviors.csv", "goal", n)
    harmless = read_prompts(ROOT / "data/alpaca/alpaca_instructions.json", "instruction", n)
    p = params.from_mapping(dict(model=args.model, dtype=args.dtype, device=args.device, es2_batch_size=args.batch_size,
                                 batch_size=args.batch_size, es2_steps=10**6, kl_threshold=float("inf"), es2_retain="kl",
                                 es2_checkpoint_every=0, kl_guard_every=10**6))
    trainer = ES2Trainer(model, tokenizer, harmful, harmless, layers, TrainConfig.of(p.to_dict(), "es2_retain"),
                         heldout=harmless[:1])
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    tokens: dict[str, list[int]] = {"ours": [], "baseline": []}
    for step in range(args.steps + 1):  # step 0 is the warm-up of each method
        for method in ("ours", "baseline"):
            sync()
            start = time.perf_counter()
            count = trainer.train_step()["tokens"] if method == "ours" else baseline_step(trainer, step)
            sync()
            if step > 0:
                times[method].append(time.perf_counter() - start)
                tokens[method].append(count)
    speed = {m: sum(tokens[m]) / sum(times[m]) for m in times}
    result = {
        "model": args.model, "device": str(trainer.device), "dtype": args.dtype, "layers": layers,
        "batch": f"{args.batch_size}+{args.batch_size} prompts", "adapter": f"LoRA r={p.lora_r} on {p.lora_targets}",
        "steps": args.steps, "seconds_per_step": {m: [round(t, 3) for t in v] for m, v in times.items()},
        "median_seconds_per_step": {m: round(statistics.median(v), 3) for m, v in times.items()},
        "tokens_per_second": {m: round(v, 1) for m, v in speed.items()},
        "speedup": round(speed["ours"] / speed["baseline"], 2),
        "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
