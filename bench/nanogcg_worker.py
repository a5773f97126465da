"""Run nanoGCG (PyPI nanogcg 0.3.0) once and print its per-step seconds and losses as JSON; bench/gcg.py starts
this with the Python of nanoGCG's own virtual environment (nanoGCG pins transformers <= 4.47).

Input: one JSON object on stdin {model_dir, chat_template, dtype, device, threads, prompt, target, optim_str_init,
steps, search_width, topk, batch_size, seed, use_prefix_cache}. Output: one JSON line on stdout.
"""

import json
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import nanogcg
import nanogcg.gcg


def config_for_447(model_dir: str):
    """The model's config as transformers 4.47 needs it: transformers 5 writes the RoPE settings under
    `rope_parameters`, which 4.47 ignores (it would silently fall back to rope_theta 10,000, a different model)."""
    config = AutoConfig.from_pretrained(model_dir)
    rope = getattr(config, "rope_parameters", None)
    if rope:
        config.rope_theta = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config.rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return config


def main() -> None:
    cfg = json.load(sys.stdin)
    torch.set_num_threads(cfg["threads"])
    dtype = getattr(torch, cfg["dtype"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], config=config_for_447(cfg["model_dir"]),
                                                 torch_dtype=dtype).to(cfg["device"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    tokenizer.chat_template = cfg["chat_template"]  # 4.47 does not read chat_template.jinja: use ours, verbatim
    stamps: list[float] = []

    def timed(iterable):  # nanoGCG's step loop is `for _ in tqdm(range(num_steps))`: time each iteration
        for item in iterable:
            stamps.append(time.perf_counter())
            yield item

    nanogcg.gcg.tqdm = timed
    config = nanogcg.GCGConfig(num_steps=cfg["steps"], optim_str_init=cfg["optim_str_init"],
                               search_width=cfg["search_width"], topk=cfg["topk"], batch_size=cfg["batch_size"],
                               seed=cfg["seed"], use_prefix_cache=cfg["use_prefix_cache"], verbosity="WARNING")
    start = time.perf_counter()
    gcg = nanogcg.gcg.GCG(model, tokenizer, config)
    result = gcg.run(cfg["prompt"], cfg["target"])
    stamps.append(time.perf_counter())
    cache = gcg.prefix_cache
    print(json.dumps({
        "losses": result.losses, "best_string": result.best_string, "total_s": stamps[-1] - start,
        "step_s": [b - a for a, b in zip(stamps, stamps[1:])], "setup_s": stamps[0] - start,
        "prefix_cache_length_after": None if cache is None else cache[0][0].shape[-2] if isinstance(cache, tuple)
        else cache.get_seq_length(),  # a check that the cached prefix was not extended in place
        "versions": {"nanogcg": "0.3.0", "transformers": __import__("transformers").__version__,
                     "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
