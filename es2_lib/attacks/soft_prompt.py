"""Soft-prompt attack (Schwinn et al. 2024, "Soft Prompt Threats: Attacking Safety Alignment and Unlearning in
Open-Source LLMs through the Embedding Space"; docs/architecture.md, "Attacks"): optimise free control-token
embeddings placed after the instruction so that the model starts its answer with an affirmative target ("Sure,
here is ...").

Per prompt, `n` control embeddings (initialised as the embedding of "!", like GCG's suffix) sit between the
user's instruction and the rest of the chat template. They follow signed gradient descent on the cross-entropy
of the target tokens, c ← c − α·sign(∇c CE), and a prompt stops once its target is reproduced by greedy decoding
(teacher-forced argmax equals every target token, which is the same condition). For speed (docs/architecture.md,
"Speed") the prompts are optimised in batches, the fixed prefix (template + instruction) is encoded once and reused
as a KV cache, and the lm_head runs only at the target positions. The perturbation is the L2 drift of the control
embeddings from their initial value.

`breaking` bounds the drift instead (issue 23): each control embedding stays in an L2 ball around its initial value
whose radius grows along a schedule (units: the mean token-embedding norm), with normalised-gradient steps projected
back into the ball (L2 PGD), so the radius at which a prompt's affirmative opening (the first tokens of its target)
is first reproduced is its breaking budget. That is the attack's own success criterion, shortened to the opening; the
response generated there is then judged like every other attack.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from .. import decoding, judges
from ..batching import left_pad
from ..hooks import position_ids
from ..models import chat_prompt, decoder_and_head
from ..progress import progress as progress_bar
from .budgets import SoftPromptBudget
from .common import Outcome

INIT_TEXT = "!"  # control tokens start as the embedding of this text's first token
DEFAULT_TARGET = "Sure, here is"  # target of prompts without one (AdvBench rows carry their own)


def split_chat(tokenizer: PreTrainedTokenizerBase, instruction: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt before and after the end of the user's instruction (the control tokens go
    between them); the second part ends with the generation prompt."""
    text = chat_prompt(tokenizer, instruction)
    end = text.rfind(instruction)
    if end < 0:
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} does not contain the instruction verbatim")
    end += len(instruction)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(text[:end]), encode(text[end:])


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No weight gradients inside the block (only the control embeddings are optimised)."""
    flags = [(w, w.requires_grad) for w in model.parameters()]
    try:
        for w, _ in flags:
            w.requires_grad_(False)
        yield
    finally:
        for w, flag in flags:
            w.requires_grad_(flag)


def _right_pad(rows: list[list[int]], value: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [n, width], mask [n, width]) padded on the right: the rest after the control tokens."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [value] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def _project(control: torch.Tensor, init: torch.Tensor, radius: float) -> torch.Tensor:
    """`control` [n, hidden] with each row's drift from `init` [n, hidden] shrunk to L2 norm at most `radius`."""
    drift = control - init
    return init + drift * (radius / drift.norm(dim=-1, keepdim=True).clamp(min=radius))


def _optimize_batch(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str], control: torch.Tensor,
    steps: int, step_size: float, init: torch.Tensor, radii: torch.Tensor | None = None,
) -> tuple[list[list[float]], list[int], list[bool]]:
    """Optimise `control` [batch, n, hidden] (float32, updated in place) from `init` [n, hidden]. Without `radii`
    each step is c <- c - step_size * sign(grad); with `radii` [steps] (absolute L2 radii) step t moves each control
    embedding by radii[t] / 2 along its normalised gradient and projects it into the ball of radius radii[t] around
    its initial value. Returns per step the loss of every row (a stopped row keeps its last loss), the steps each row
    took (a row whose target is reproduced after t updates stops with t), and whether its target was reached."""
    decoder, head = decoder_and_head(model)
    embed = model.get_input_embeddings()
    device, n_ctrl = embed.weight.device, control.shape[1]
    parts = [split_chat(tokenizer, p) for p in prompts]
    target_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    prefix, prefix_mask = left_pad([pre for pre, _ in parts], tokenizer.pad_token_id, device)  # [b, P]
    tail, tail_mask = _right_pad([suf + tgt for (_, suf), tgt in zip(parts, target_ids)], tokenizer.pad_token_id,
                                 device)  # [b, suffix + T]
    target, target_mask = _right_pad(target_ids, tokenizer.pad_token_id, device)  # [b, T]
    # the hidden state at full-rest position n + len(suffix) - 1 + j predicts target token j
    target_pos = torch.tensor([[n_ctrl + len(suf) - 1 + j for j in range(target.shape[1])] for _, suf in parts],
                              device=device).clamp(max=n_ctrl + tail.shape[1] - 1)
    prefix_len = prefix_mask.sum(1)  # [b] real prefix tokens
    active = torch.ones(len(prompts), dtype=torch.bool)
    last_loss, used, reached, history = [float("nan")] * len(prompts), [steps] * len(prompts), [False] * len(prompts), []
    cache, cached_rows = None, None
    for step in range(steps):
        rows = active.nonzero().flatten().to(device)
        if cached_rows is None or not torch.equal(rows, cached_rows):  # (re)encode the fixed prefix of active rows
            with torch.no_grad():
                cache = decoder(input_ids=prefix[rows], attention_mask=prefix_mask[rows],
                                position_ids=position_ids(prefix_mask[rows]), use_cache=True).past_key_values
            cached_rows = rows
        ctrl = control[rows.cpu()].to(device).requires_grad_(True)  # [b, n, hidden]
        embeds = torch.cat([ctrl.to(embed.weight.dtype), embed(tail[rows])], dim=1)  # [b, n + tail, hidden]
        mask = torch.cat([prefix_mask[rows], torch.ones_like(ctrl[..., 0], dtype=prefix_mask.dtype), tail_mask[rows]], 1)
        positions = prefix_len[rows, None] + torch.arange(embeds.shape[1], device=device)
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=copy.deepcopy(cache), use_cache=True).last_hidden_state
        at_targets = hidden.gather(1, target_pos[rows, :, None].expand(-1, -1, hidden.shape[-1]))  # [b, T, hidden]
        logits = head(at_targets).float()  # [b, T, vocab]: only the target positions
        valid = target_mask[rows].bool()
        ce = F.cross_entropy(logits.transpose(1, 2), target[rows], reduction="none") * valid  # [b, T]
        loss = ce.sum(1) / valid.sum(1)  # [b] mean CE per row
        done = ((logits.argmax(-1) == target[rows]) | ~valid).all(1)  # greedy decoding reproduces the target
        (grad,) = torch.autograd.grad(loss.sum(), ctrl)  # rows are independent: the sum gives each its own gradient
        for i, row in enumerate(rows.tolist()):
            last_loss[row] = float(loss[i].detach())
            if done[i]:
                active[row], used[row], reached[row] = False, step, True
            elif radii is None:
                control[row] -= step_size * grad[i].sign().float().cpu()
            else:
                g = grad[i].float().cpu()
                moved = control[row] - radii[step] / 2 * g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                control[row] = _project(moved, init, float(radii[step]))
        history.append(list(last_loss))
        if not active.any():
            break
    return history, used, reached


def optimize(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str], n_tokens: int,
    steps: int, step_size: float, batch_size: int = 8, progress: bool | str = False, radii: torch.Tensor | None = None,
) -> dict:
    """Soft prompts for each prompt: {"control" [n, tokens, hidden], "init" [tokens, hidden] (float32, CPU),
    "loss" [steps, n] (per step; a stopped prompt keeps its last loss), "steps" [n], "reached" [n]}; `radii`
    [steps] bounds each control embedding's drift per step (`_optimize_batch`); `progress`: a bar (a string: its
    label)."""
    embed = model.get_input_embeddings()
    init_id = tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"][0]
    init = embed.weight[init_id].detach().float().cpu().expand(n_tokens, -1).clone()  # [tokens, hidden]
    control = init.expand(len(prompts), -1, -1).clone()  # [n, tokens, hidden]
    losses, used, reached = [], [], []
    starts = range(0, len(prompts), batch_size)
    with _frozen(model):
        label = progress if isinstance(progress, str) else "soft prompt"
        for start in progress_bar(starts, desc=label) if progress else starts:
            chunk = slice(start, start + batch_size)
            part = control[chunk]  # a view: updated in place
            hist, u, r = _optimize_batch(model, tokenizer, prompts[chunk], targets[chunk], part, steps, step_size, init,
                                         radii)
            losses.append(torch.tensor(hist + [hist[-1]] * (steps - len(hist))))  # [steps, chunk]
            used += u
            reached += r
    return {"control": control, "init": init, "loss": torch.cat(losses, 1), "steps": torch.tensor(used),
            "reached": torch.tensor(reached)}


@torch.inference_mode()
def generate_with_control(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], control: torch.Tensor,
    max_new_tokens: int, batch_size: int = 8,
) -> list[str]:
    """Greedy responses with each prompt's control embeddings [n, tokens, hidden] after its instruction (continuous
    batching, `decoding.greedy_tokens`), each stopped at its verdict (`judges.settled`: they are only judged)."""
    embed = model.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    rows = []
    with torch.inference_mode():
        for prompt, ctrl in zip(prompts, control):
            pre, suf = split_chat(tokenizer, prompt)
            ids = lambda x: torch.tensor(x, device=device)  # noqa: E731
            rows.append(torch.cat([embed(ids(pre)), ctrl.to(device, dtype), embed(ids(suf))]))  # [len, hidden]
    return decoding.greedy_tokens(model, tokenizer, rows, max_new_tokens, batch_size, stop=judges.settled)


def attack(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[dict], budget: SoftPromptBudget,
           max_new_tokens: int, batch_size: int) -> Outcome:
    """Optimise soft prompts for harmful rows {"prompt", "target"} and generate. Perturbation: `l2` = mean L2 drift
    of a control embedding from its initial value, `relative` = that over the mean token-embedding norm."""
    prompts = [row["prompt"] for row in rows]
    targets = [row.get("target", DEFAULT_TARGET) for row in rows]
    result = optimize(model, tokenizer, prompts, targets, budget.tokens, budget.steps, budget.step_size, batch_size,
                      progress=True)
    responses = generate_with_control(model, tokenizer, prompts, result["control"], max_new_tokens, batch_size)
    drift = (result["control"] - result["init"]).norm(dim=-1).mean(1)  # [n] mean over control tokens
    unit = token_norm(model)
    return Outcome(
        "soft_prompt", "", responses,
        {"l2": float(drift.mean()), "relative": float(drift.mean()) / unit,
         "steps": float(result["steps"].float().mean()), "reached": float(result["reached"].float().mean()),
         "loss_first": float(result["loss"][0].mean()), "loss_last": float(result["loss"][-1].mean())},
        {"tokens": budget.tokens, "steps": budget.steps, "step_size": budget.step_size,
         "default_targets": sum("target" not in row for row in rows)},
        extra={"soft_prompt_steps": result["steps"].tolist(), "target_reached": result["reached"].tolist()},
    )


def token_norm(model: nn.Module) -> float:
    """The mean L2 norm of a token embedding: the unit of soft-prompt drift and radii."""
    return float(model.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())


def opening(tokenizer: PreTrainedTokenizerBase, target: str, n_tokens: int) -> str:
    """The first `n_tokens` tokens of `target` as text ("Sure, here is a" of a longer AdvBench target)."""
    return tokenizer.decode(tokenizer(target, add_special_tokens=False)["input_ids"][:n_tokens])


def breaking(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[dict], tokens: int, radii: list[float],
             steps_per_radius: int, target_tokens: int, max_new_tokens: int, batch_size: int,
             desc: str | None = None) -> dict:
    """Each prompt's breaking radius on the growing grid `radii` (x the mean token-embedding norm): soft prompts of
    `tokens` control embeddings optimised once along the schedule (each radius held for `steps_per_radius` L2 PGD
    steps) towards the first `target_tokens` tokens of the prompt's target; a prompt breaks at the radius of the
    step whose update first made greedy decoding reproduce them (the initial "!" embeddings count as the first
    radius), and its response there is generated with `max_new_tokens`. Returns the shape of
    `breaking.at_breaking_point`: {"found": grid index or None (never reproduced), "budget", "response",
    "perturbation" ({"l2", "relative"}: the prompt's mean drift per control embedding)}."""
    prompts = [row["prompt"] for row in rows]
    targets = [opening(tokenizer, row.get("target", DEFAULT_TARGET), target_tokens) for row in rows]
    unit = token_norm(model)
    schedule = torch.tensor(radii, dtype=torch.float32).repeat_interleave(steps_per_radius) * unit
    schedule = torch.cat([schedule, schedule[-1:]])  # one step more: the check after the last radius's updates
    result = optimize(model, tokenizer, prompts, targets, tokens, len(schedule), 0.0, batch_size,
                      progress=desc or False, radii=schedule)
    found = [max(int(s) - 1, 0) // steps_per_radius if r else None
             for s, r in zip(result["steps"].tolist(), result["reached"].tolist())]
    broke = [i for i, k in enumerate(found) if k is not None]
    texts = generate_with_control(model, tokenizer, [prompts[i] for i in broke], result["control"][broke],
                                  max_new_tokens, batch_size) if broke else []
    drift = (result["control"] - result["init"]).norm(dim=-1).mean(1)  # [n] mean over control embeddings
    response: list[str | None] = [None] * len(prompts)
    perturbation: list[dict | None] = [None] * len(prompts)
    for i, text in zip(broke, texts):
        response[i] = text
        perturbation[i] = {"l2": float(drift[i]), "relative": float(drift[i]) / unit}
    return {"found": found, "budget": [None if k is None else float(radii[k]) for k in found], "response": response,
            "perturbation": perturbation}
