"""Generation of responses, the input to every refusal and coherence metric (docs/architecture.md, "Metrics" and
"Speed").

Greedy responses come from `decoding.greedy` (continuous batching: rows leave at EOS, or as soon as the refusal
verdict is settled when the caller only needs the verdict, and waiting prompts take their place), decoded without
the prompt and special tokens, in the caller's order. Sampled responses (for SRR's candidate lists) and
responses with their token log-probs come from `model.generate` on length-sorted batches
(batching.length_sorted), each prompt's forward run once and its KV cache shared among the samples. Works on
plain and peft-wrapped causal language models.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from es2_lib import decoding, judges
from es2_lib.batching import check_fits, length_sorted
from es2_lib.hooks import position_ids
from es2_lib.models import chat_prompt, decoder_and_head
from es2_lib.progress import progress as progress_bar


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
    temperature: float = 0.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    return_logprobs: bool = False,
    until_verdict: bool = False,
) -> list[str] | tuple[list[str], list[list[float]]]:
    """Greedy responses to `prompts` (wrapped in the chat template when `chat`), stripped, in input order.

    With `until_verdict` a greedy response ends as soon as every keyword judge counts it a refusal
    (`judges.settled`): no more tokens can change a verdict, so it is the full response's verdict, on a shorter
    text. Only for responses that are judged and not read (a refusal then shows as its opening words).

    With `temperature` > 0: `num_return_sequences` samples per prompt by plain temperature sampling (no top-k or
    top-p, whatever the model's generation_config says), seeded by `seed`; prompt-major, so the samples of
    prompt i are at [i * n, (i + 1) * n). With `return_logprobs`: also, per response, the log-probability under the
    model (raw logits, before temperature) of each generated token that is not a special token."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"generate needs max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}")
    if temperature < 0 or num_return_sequences < 1 or (temperature == 0 and num_return_sequences > 1):
        raise ValueError(f"generate needs temperature >= 0 and num_return_sequences >= 1 (1 when greedy), got "
                         f"{temperature}, {num_return_sequences}")
    if until_verdict and (temperature > 0 or return_logprobs):
        raise ValueError("generate stops at the verdict only for greedy responses without log-probs")
    n = num_return_sequences
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    if tokenizer.padding_side != "left":
        raise ValueError("generate needs a left-padded tokenizer (models.load_model returns one)")
    if temperature == 0 and not return_logprobs:
        return decoding.greedy(model, tokenizer, prompts, max_new_tokens, batch_size, chat=chat, progress=progress,
                               stop=judges.settled if until_verdict else None)
    texts = [chat_prompt(tokenizer, p) for p in prompts] if chat else list(prompts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=not chat)["input_ids"]] if texts else []
    check_fits(lengths, getattr(model.config, "max_position_embeddings", None), max_new_tokens)
    batches = length_sorted(lengths, batch_size)  # longest first: memory errors show at once
    responses: list[str] = [""] * (len(texts) * n)
    logprobs: list[list[float]] = [[] for _ in responses]
    special = torch.tensor(tokenizer.all_special_ids, device=model.device)
    with torch.inference_mode(), torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in progress_bar(batches, desc="generate") if progress else batches:
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=not chat).to(model.device)
            inputs = _shared_prefix(model, enc, n) if n > 1 else dict(enc)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling, pad_token_id=tokenizer.pad_token_id,
                                 return_dict_in_generate=return_logprobs, output_logits=return_logprobs)
            sequences = out.sequences if return_logprobs else out  # [batch * n, prompt + new], prompt-major
            new_tokens = sequences[:, enc["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, i in enumerate(batch):
                responses[i * n:(i + 1) * n] = [text.strip() for text in decoded[row * n:(row + 1) * n]]
            if return_logprobs:
                chosen = torch.stack([step.float().log_softmax(-1).gather(1, new_tokens[:, t, None])[:, 0]
                                      for t, step in enumerate(out.logits)], 1)  # [batch * n, new]
                kept = ~torch.isin(new_tokens, special)
                for row, i in enumerate(batch):
                    for j in range(n):
                        logprobs[i * n + j] = chosen[row * n + j][kept[row * n + j]].tolist()
    return (responses, logprobs) if return_logprobs else responses


def _shared_prefix(model: PreTrainedModel, enc, n: int) -> dict:
    """Inputs for `n` samples per prompt that run the prompt's forward once: all but the last prompt
    token go through the model once, their KV cache is repeated n times, and generate continues from there."""
    ids, mask = enc["input_ids"], enc["attention_mask"]  # [batch, width], left-padded
    prefix_mask = mask[:, :-1]
    decoder, _ = decoder_and_head(model)  # no lm_head: only the cache is needed
    cache = decoder(input_ids=ids[:, :-1], attention_mask=prefix_mask, use_cache=True,
                    position_ids=position_ids(prefix_mask)).past_key_values
    cache.batch_repeat_interleave(n)
    return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0),
            "past_key_values": cache}
