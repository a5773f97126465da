"""Is safety a distinct linear subspace? The weight- and activation-space tests of Ponkshe et al. 2025
("Safety Subspaces are Not Linearly Distinct", arXiv 2505.14185; DESIGN.md §1, "Related systems"), turned on ES2.

Weight space: an update is the merged weight change ΔW = left @ right of each matrix (LoRA: B·A·scaling, kept
factored so its SVD costs a QR of two thin factors). Its orthonormal basis at energy fraction η is the fewest top
left singular vectors (the output space: LoRA's A starts from the same seeded random init in every fine-tune, so
the input space would overlap by construction) whose squared singular values reach η of the total. Mode subspace
overlap MSO(Q_a, Q_b) = ‖Q_aᵀQ_b‖²_F / min(k_a, k_b), against max(k_a, k_b)/d, its mean for random subspaces.
The projection test keeps the component of an update inside (or outside) the top-k left singular subspace of a
reference update, k = ⌈fraction · rank⌉, and reports the energy it keeps. Activation space: the same MSO between
the bases of last-token activations [n, hidden] (uncentred, so the class mean counts) of two prompt sets.
"""

from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from matplotlib.figure import Figure
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import es2, judges, models, plots
from .params import Params
from .progress import progress as progress_bar

Factored = tuple[torch.Tensor, torch.Tensor]  # (left [out, r], right [r, in]): the matrix left @ right
Delta = Factored | torch.Tensor  # a decoder matrix's change, factored; any other parameter's change, dense
Update = dict[str, Delta]  # parameter name (as in the plain model) -> its change
RANK_TOL = 1e-6  # singular values below this share of the largest count as zero


# --- updates -----------------------------------------------------------------------------------------------------

def lora_update(model: PeftModel, adapter: str = "default") -> Update:
    """The merged change B·A·scaling of every LoRA-wrapped linear layer of `adapter`, factored, on the CPU."""
    prefix = "base_model.model."
    update: Update = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            if module.fan_in_fan_out or module.use_dora.get(adapter, False):
                raise ValueError(f"{name}: only plain LoRA on nn.Linear (no DoRA, no fan_in_fan_out) is supported")
            left = module.lora_B[adapter].weight.detach().float().cpu() * module.scaling[adapter]  # [out, r]
            right = module.lora_A[adapter].weight.detach().float().cpu()  # [r, in]
            update[f"{name.removeprefix(prefix)}.weight"] = (left, right)
    if not update:
        raise ValueError(f"the model has no LoRA layers of adapter {adapter!r}")
    return update


def factor(matrix: torch.Tensor) -> Factored:
    """A dense matrix as (U·S, Vᵀ) over its non-zero singular values (SVD in float64; factors float32, CPU)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double().cpu(), full_matrices=False)
    keep = s > RANK_TOL * s[0] if s.numel() and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    return (u[:, keep] * s[keep]).float(), vh[keep].float()


def decoder_matrices(model: nn.Module) -> set[str]:
    """Names of the 2-D weights inside the decoder blocks (the matrices the weight-space tests compare)."""
    blocks = {id(w) for w in models.decoder_layers(model).parameters() if w.ndim == 2}
    return {name for name, w in model.named_parameters() if id(w) in blocks}


def weight_changes(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor], matrices: set[str]) -> Update:
    """after − before for every parameter that changed: `matrices` factored, the others dense."""
    update: Update = {}
    for name, weight in after.items():
        if name in before and not torch.equal(weight.detach().cpu(), before[name].detach().cpu()):
            change = weight.detach().float().cpu() - before[name].detach().float().cpu()
            update[name] = factor(change) if name in matrices else change
    return update


def full_update(model: nn.Module, before: dict[str, torch.Tensor]) -> Update:
    """The change of the model's parameters since `before` (name -> weights), decoder matrices factored."""
    return weight_changes(dict(model.named_parameters()), before, decoder_matrices(model))


def saved_update(model: nn.Module, adapter_dir: str | Path) -> Update:
    """The update stage 02 saved in `adapter_dir` (a peft LoRA adapter or full weights), read without changing
    `model`: LoRA layers are injected, read and removed again; full weights are compared with the model's."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").is_file():
        tuned = es2.load_tuned(model, adapter_dir)
        try:
            return lora_update(tuned)
        finally:
            tuned.unload()
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds neither a peft adapter nor safetensors weights")
    current = dict(model.named_parameters())
    saved = {name: w for file in files for name, w in load_file(str(file)).items() if name in current}
    return weight_changes(saved, current, decoder_matrices(model))


def dense(delta: Delta) -> torch.Tensor:
    return delta[0] @ delta[1] if isinstance(delta, tuple) else delta


def energy(delta: Delta) -> float:
    """‖ΔW‖²_F, for a factored matrix from its thin factors: trace((LᵀL)(RRᵀ))."""
    if isinstance(delta, tuple):
        left, right = delta
        return float(((left.T @ left) * (right @ right.T)).sum())
    return float(delta.float().pow(2).sum())


@contextlib.contextmanager
def applied(model: nn.Module, update: Update) -> Iterator[nn.Module]:
    """Add `update` to the model's weights in place; the exact original weights come back on exit."""
    params = dict(model.named_parameters())
    missing = sorted(set(update) - set(params))
    if missing:
        raise KeyError(f"the update changes parameters the model lacks, e.g. {missing[0]!r}")
    saved = {name: params[name].detach().clone() for name in update}
    try:
        with torch.no_grad():
            for name, delta in update.items():
                weight = params[name]
                weight.add_(dense(delta).to(weight.device, weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                params[name].copy_(weight)


# --- bases, overlap and projection ---------------------------------------------------------------------------------

def left_singular(delta: Factored) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors [out, rank] and singular values [rank] of left @ right, from QRs of the thin
    factors and the SVD of an r × r core; directions with singular value ~0 are dropped."""
    left, right = delta
    q_left, r_left = torch.linalg.qr(left.double())  # [out, r], [r, r]
    _, r_right = torch.linalg.qr(right.double().T)  # [in, r] (unused), [r, r]
    u, s, _ = torch.linalg.svd(r_left @ r_right.T)
    keep = s > RANK_TOL * s[0] if s.numel() and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    return (q_left @ u[:, keep]).float(), s[keep].float()


def energy_rank(singular: torch.Tensor, fraction: float) -> int:
    """The fewest top singular directions whose squared values reach `fraction` of the total energy."""
    if not 0 < fraction <= 1:
        raise ValueError(f"energy fraction must be in (0, 1], got {fraction}")
    if singular.numel() == 0:
        return 0
    share = singular.double().pow(2).cumsum(0) / singular.double().pow(2).sum()
    return min(int((share < fraction - 1e-9).sum()) + 1, singular.numel())


def basis(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Orthonormal basis [d, k] of a matrix's column space [d, n] capturing `fraction` of its energy."""
    u, s, _ = torch.linalg.svd(values.double(), full_matrices=False)
    return u[:, :energy_rank(s, fraction)].float()


def mso(q_a: torch.Tensor, q_b: torch.Tensor) -> float:
    """Mode subspace overlap ‖Q_aᵀQ_b‖²_F / min(k_a, k_b) of orthonormal bases [d, k_a], [d, k_b]: 1 when one
    subspace contains the other, 0 when they are orthogonal."""
    if q_a.shape[0] != q_b.shape[0]:
        raise ValueError(f"bases live in different spaces: {q_a.shape[0]} vs {q_b.shape[0]} dimensions")
    k = min(q_a.shape[1], q_b.shape[1])
    if k == 0:
        raise ValueError("MSO of an empty subspace is undefined")
    return float((q_a.double().T @ q_b.double()).pow(2).sum() / k)


def random_mso(k_a: int, k_b: int, d: int) -> float:
    """Expected MSO of two independent uniformly random subspaces of dimensions k_a, k_b in R^d: E‖Q_aᵀQ_b‖²_F =
    k_a·k_b/d, so the expectation is max(k_a, k_b)/d."""
    return max(k_a, k_b) / d


def weight_overlap(updates: dict[str, Update], fractions: Sequence[float]) -> list[dict]:
    """MSO per pair of updates, matrix and energy fraction (left singular subspaces), with the random baseline.

    Rows {a, b, matrix, fraction, k_a, k_b, d, mso, random}; only matrices that both updates change count."""
    spectra = {name: {m: left_singular(d) for m, d in upd.items() if isinstance(d, tuple)}
               for name, upd in updates.items()}
    names = list(updates)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for matrix in [m for m in spectra[a] if m in spectra[b]]:
                (u_a, s_a), (u_b, s_b) = spectra[a][matrix], spectra[b][matrix]
                if s_a.numel() == 0 or s_b.numel() == 0:
                    continue
                for fraction in fractions:
                    k_a, k_b = energy_rank(s_a, fraction), energy_rank(s_b, fraction)
                    rows.append({"a": a, "b": b, "matrix": matrix, "fraction": fraction, "k_a": k_a, "k_b": k_b,
                                 "d": u_a.shape[0], "mso": mso(u_a[:, :k_a], u_b[:, :k_b]),
                                 "random": random_mso(k_a, k_b, u_a.shape[0])})
    return rows


def projection_rank(rank: int, fraction: float) -> int:
    """k = ⌈fraction · rank⌉ of a reference update's `rank` singular directions (at least 1 when rank > 0)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"projection fraction must be in (0, 1], got {fraction}")
    return min(rank, max(1, math.ceil(fraction * rank - 1e-9))) if rank else 0


def project(delta: Factored, q: torch.Tensor, complement: bool = False) -> Factored:
    """The part of left @ right inside span(q) (q [out, k] orthonormal), or outside it: (I − QQᵀ)·ΔW."""
    left, right = delta
    inside = q @ (q.T @ left)  # [out, r]
    return (left - inside if complement else inside), right


def project_update(update: Update, reference: Update, fraction: float, complement: bool = False) -> tuple[Update, dict]:
    """Project every matrix of `update` onto (or off) the top-k left singular subspace of the same matrix of
    `reference`, k = projection_rank(rank of the reference's matrix, fraction). A parameter the reference leaves
    unchanged has an empty subspace there (so it is dropped, or kept whole for the complement).

    Returns the projected update and {energy_kept: Σ‖PΔ‖²/Σ‖Δ‖², energy_random: the share a random subspace
    of the same k would keep in expectation, k_mean, rank_mean}."""
    projected: Update = {}
    total = kept = expected = 0.0
    ks, ranks = [], []
    for name, delta in update.items():
        e = energy(delta)
        total += e
        ref = reference.get(name)
        if isinstance(delta, tuple) and isinstance(ref, tuple):
            u, s = left_singular(ref)
            k = projection_rank(s.numel(), fraction)
            ks.append(k)
            ranks.append(s.numel())
            projected[name] = project(delta, u[:, :k], complement)
            kept += energy(projected[name])
            share = k / u.shape[0]
            expected += e * (1 - share if complement else share)
        elif complement:
            projected[name] = delta
            kept += e
            expected += e
    if total == 0:
        raise ValueError("cannot project an update that changes nothing")
    return projected, {"energy_kept": kept / total, "energy_random": expected / total,
                       "k_mean": sum(ks) / len(ks) if ks else 0.0,
                       "rank_mean": sum(ranks) / len(ranks) if ranks else 0.0}


# --- activation space ---------------------------------------------------------------------------------------------

def depth_layers(n_layers: int, depth: Sequence[float]) -> list[int]:
    """Decoder layers l in 1..L with depth[0] <= l / L <= depth[1] (at least the one nearest the band's middle)."""
    low, high = depth
    if not 0 <= low <= high <= 1:
        raise ValueError(f"activation depth must be [low, high] with 0 <= low <= high <= 1, got {list(depth)}")
    layers = [layer for layer in range(1, n_layers + 1) if low - 1e-9 <= layer / n_layers <= high + 1e-9]
    return layers or [min(max(round((low + high) / 2 * n_layers), 1), n_layers)]


def activation_overlap(groups: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]], layers: Sequence[int],
                       fractions: Sequence[float]) -> list[dict]:
    """MSO between the bases of two groups' last-token states per layer and energy fraction.

    groups: name -> states [n, len(layers), hidden]; each basis spans the (uncentred) states' row space at the
    fraction of their energy. Rows {a, b, layer, fraction, k_a, k_b, d, mso, random}."""
    rows = []
    for index, layer in enumerate(layers):
        for a, b in pairs:
            x_a, x_b = groups[a][:, index], groups[b][:, index]  # [n, hidden]
            for fraction in fractions:
                q_a, q_b = basis(x_a.T, fraction), basis(x_b.T, fraction)
                rows.append({"a": a, "b": b, "layer": layer, "fraction": fraction, "k_a": q_a.shape[1],
                             "k_b": q_b.shape[1], "d": x_a.shape[1], "mso": mso(q_a, q_b),
                             "random": random_mso(q_a.shape[1], q_b.shape[1], x_a.shape[1])})
    return rows


# --- supervised fine-tuning (the "useful", "harmful" and benign updates) -------------------------------------------

def draw_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict], sizes: dict[str, int | None],
               max_prompt_tokens: int, seed: int, skip_refusals: bool = False) -> dict[str, list[dict]]:
    """Disjoint seeded draws {name: rows} of {prompt, response} rows whose chat prompt has at most
    `max_prompt_tokens` tokens, in the order of `sizes` (the last size may be None: all the remaining ones); with
    `skip_refusals`, responses the paper's keyword judge counts as refusals are left out (e.g. the "unsafe"
    responses that still say "As an AI language model")."""
    order = list(range(len(pairs)))
    random.Random(f"{seed}/pairs").shuffle(order)
    prompt_tokens = lambda row: len(tokenizer(models.chat_prompt(tokenizer, row["prompt"]),
                                              add_special_tokens=False)["input_ids"])
    usable = [pairs[i] for i in order if prompt_tokens(pairs[i]) <= max_prompt_tokens
              and not (skip_refusals and judges.is_refusal(pairs[i]["response"]))]
    if None in list(sizes.values())[:-1]:
        raise ValueError(f"only the last size may be None (all the remaining pairs), got {sizes}")
    fixed = sum(n for n in sizes.values() if n is not None)
    if fixed + (None in sizes.values()) > len(usable):
        raise ValueError(f"asked for {fixed} pairs ({sizes}) but only {len(usable)} of {len(pairs)} have a prompt of "
                         f"at most {max_prompt_tokens} tokens"
                         + (" and a non-refusal response" if skip_refusals else ""))
    draws, start = {}, 0
    for name, n in sizes.items():
        draws[name] = usable[start:] if n is None else usable[start:start + n]
        start += len(draws[name])
    return draws


def fine_tune(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict], p: Params, steps: int,
              lr: float, batch_size: int, response_tokens: int, name: str = "fine-tune") -> tuple[Update, list[dict]]:
    """Supervised fine-tuning from the model's current weights, returning its update and leaves `model` as it was.

    The adapter follows ES2's (`es2_adapter`, LoRA settings and seed): LoRA layers are attached, trained and
    removed; full tuning trains every weight and restores them after reading the change. The loss is the
    cross-entropy of the first `response_tokens` response tokens after the chat prompt (es2.refusal_ce), AdamW
    at a constant `lr`, batches drawn in an order seeded by `p.seed` and `name` (also the progress label) that
    cycles through `pairs`."""
    if isinstance(model, PeftModel):
        raise TypeError("fine_tune needs a plain model (apply other updates with `applied`, not a peft wrapper)")
    if not pairs:
        raise ValueError("fine_tune needs at least one pair")
    before = {n: w.detach().clone() for n, w in model.named_parameters()} if p.es2_adapter == "full" else None
    requires_grad = {n: w.requires_grad for n, w in model.named_parameters()}
    tuned = es2.attach_adapter(model, p)
    trainable = [w for w in tuned.parameters() if w.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    order = [i for epoch in range(math.ceil(steps * batch_size / len(pairs)))
             for i in random.Random(f"{p.seed}/{name}/{epoch}").sample(range(len(pairs)), len(pairs))]
    log = []
    try:
        tuned.train()
        for step in progress_bar(range(steps), desc=name):
            batch = [pairs[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            loss = es2.refusal_ce(tuned, tokenizer, [(r["prompt"], r["response"]) for r in batch], response_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.append({"step": step, "loss": loss.item()})
        update = lora_update(tuned) if before is None else full_update(model, before)
    finally:  # leave the model as it came, also when training fails
        tuned.eval()
        if before is None:
            tuned.unload()
        else:
            with torch.no_grad():
                for param, weight in model.named_parameters():
                    weight.copy_(before[param])
        for param, weight in model.named_parameters():
            weight.requires_grad_(requires_grad[param])
    return update, log


def combine(*updates: Update) -> Update:
    """The sum of updates (e.g. ES2 and a later fine-tune of the ES2 model): factored matrices are stacked, so the
    sum stays exact and low-rank; anything else is added densely."""
    total: Update = {}
    for update in updates:
        for name, delta in update.items():
            if name not in total:
                total[name] = delta
            elif isinstance(total[name], tuple) and isinstance(delta, tuple):
                total[name] = (torch.cat([total[name][0], delta[0]], 1), torch.cat([total[name][1], delta[1]], 0))
            else:
                total[name] = dense(total[name]) + dense(delta)
    return total


# --- figures (from the records of results.json, so the figures stage redraws them) ----------------------------------

def weight_mso_figure(weight_mso: Sequence[dict]) -> Figure:
    """MSO against energy fraction per pair of updates, with each pair's random baseline dashed.
    weight_mso: rows with pair, fraction, mso, random, matrices (mean over matrices)."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    pairs = list(dict.fromkeys(r["pair"] for r in weight_mso))
    for color, pair in zip(("tab:purple", "tab:red", "tab:blue"), pairs):
        rows = [r for r in weight_mso if r["pair"] == pair]
        ax.plot([r["fraction"] for r in rows], [r["mso"] for r in rows], marker="o", color=color, label=f"{pair} (MSO)")
        ax.plot([r["fraction"] for r in rows], [r["random"] for r in rows], ls="--", color=color, alpha=0.6,
                label=f"{pair} (random)")
    ax.set(xlabel="energy fraction η of each basis", ylabel="MSO, mean over matrices", ylim=(0, 1.02),
           title=f"Weight space: {weight_mso[0]['matrices']} matrices")
    ax.legend(fontsize=7)
    return fig


def activation_mso_figure(activation_mso: Sequence[dict], layers: Sequence[int], per_half: int) -> Figure:
    """MSO against energy fraction of last-token activations, one panel per model (base, ES2).
    activation_mso: rows with model, pair, fraction, mso, random (mean over `layers`)."""
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    band = f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    for ax, which in zip(axes, ("base", "es2")):
        rows = [r for r in activation_mso if r["model"] == which]
        for color, pair in zip(("tab:red", "tab:orange", "tab:green"), dict.fromkeys(r["pair"] for r in rows)):
            curve = [r for r in rows if r["pair"] == pair]
            ax.plot([r["fraction"] for r in curve], [r["mso"] for r in curve], marker="o", color=color, label=pair)
            if pair.startswith("harmful A vs useful"):
                ax.plot([r["fraction"] for r in curve], [r["random"] for r in curve], ls="--", color="gray",
                        label="random baseline")
        ax.set(title=f"{plots.MODEL_LABELS[which]}: {band}, {per_half} prompts per half",
               xlabel="energy fraction η of each basis")
    axes[0].set(ylabel="MSO, mean over layers", ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    return fig


BENIGN_NAMES = {"base": "base", "es2": "ES2", "es2+benign": "ES2 + benign FT"}


def benign_figure(benign: dict[str, dict], es2_layers: Sequence[int]) -> Figure:
    """Separation at the ES2 layers and DSR (no attack, SCAV) of base, ES2 and ES2 after a benign fine-tune.
    benign: {model: {"separation": {metric: {layer: value}}, "dsr_none": summary, "dsr_scav": summary}}; layer keys
    may be strings (as read back from JSON)."""
    colors = {"base": plots.MODEL_COLORS["base"], "es2": plots.MODEL_COLORS["es2"], "es2+benign": "tab:cyan"}
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 3)
    at = lambda values, layer: {str(k): v for k, v in values.items()}[str(layer)]
    for i, (which, b) in enumerate(benign.items()):
        x = [j + 0.27 * (i - 1) for j in range(len(es2_layers))]
        for ax, metric in zip(axes, ("centroid_distance", "fisher")):
            ax.bar(x, [at(b["separation"][metric], l) for l in es2_layers], 0.27, color=colors[which],
                   label=BENIGN_NAMES[which])
        for j, key in enumerate(("dsr_none", "dsr_scav")):
            d = b[key]["dsr"]
            axes[2].bar(j + 0.27 * (i - 1), d["value"], 0.27, yerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]],
                        capsize=2, color=colors[which])
    for ax, title in zip(axes[:2], ("centroid distance / base mean norm", "Fisher ratio")):
        ax.set(xticks=range(len(es2_layers)), xticklabels=[f"layer {l}" for l in es2_layers], title=title)
    n = next(iter(benign.values()))["dsr_scav"]["n"]
    axes[2].set(xticks=[0, 1], xticklabels=["no attack", "SCAV (re-fitted)"], ylim=(0, 1.05), title=f"DSR, {n} prompts")
    axes[0].legend(fontsize=7)
    return fig


# --- what the numbers say ------------------------------------------------------------------------------------------

SELECTIVE = 1.5  # one overlap counts as larger than another only beyond this factor
DISTINCT = 0.8  # activation subspaces count as separate when the cross-class MSO is below this share of within-class


def entanglement_summary(weight: dict[str, tuple[float, float]], activation: dict[tuple[str, str], tuple[float, float]],
                         projection: list[dict], benign: dict[str, tuple[float, dict]]) -> str:
    """Sentences stating what the numbers say, by a fixed rule (so they stay true when the numbers change).

    weight: {"a vs b": (MSO, random)} for the pairs of "es2", "useful", "harmful" (e.g. means over energy fractions);
    activation: {(model, "harmful A vs useful B" | "harmful A vs harmful B" | "useful A vs useful B"): (MSO, random)};
    projection: rows of `project_update` for mode "onto" with update, fraction, energy_kept, energy_random;
    benign: {"base" | "es2" | "es2+benign": (DSR under SCAV, {layer: centroid distance})}.
    Rule: a weight overlap is "x times chance"; ES2 is called selective for harmful (or useful) learning when
    its overlap ratio with one update exceeds the other's by SELECTIVE, else "not selective"; activations are
    "separate" when cross-class MSO < DISTINCT × the smaller within-class MSO, else "overlapping"."""
    ratio = {pair: m / r if r > 0 else float("inf") for pair, (m, r) in weight.items()}
    find = lambda a, b: next(v for k, v in ratio.items() if set(k.split(" vs ")) == {a, b})
    es2_h, es2_u, u_h = find("es2", "harmful"), find("es2", "useful"), find("useful", "harmful")
    if es2_h > SELECTIVE * es2_u:
        lean = "closer to the harmful update than to the useful one"
    elif es2_u > SELECTIVE * es2_h:
        lean = "closer to the useful update than to the harmful one"
    else:
        lean = "about as close to the useful update as to the harmful one"
    text = [f"Weight space: the useful and harmful fine-tunes overlap {u_h:.1f}x chance; ES2's update overlaps the "
            f"harmful one {es2_h:.1f}x and the useful one {es2_u:.1f}x chance, so its directions are {lean}."]
    top = max(r["fraction"] for r in projection)
    kept = {r["update"]: r for r in projection if r["fraction"] == top}
    if {"useful", "harmful"} <= set(kept):
        h, u = kept["harmful"], kept["useful"]
        text.append(f"ES2's top singular subspace (fraction {top:g}) holds {h['energy_kept']:.1%} of the harmful "
                    f"update's energy and {u['energy_kept']:.1%} of the useful one's (a random subspace of that size: "
                    f"{h['energy_random']:.1%}).")
    for model in dict.fromkeys(m for m, _ in activation):
        cross = activation[(model, "harmful A vs useful B")][0]
        within = min(activation[(model, "harmful A vs harmful B")][0], activation[(model, "useful A vs useful B")][0])
        verdict = "separate" if cross < DISTINCT * within else "overlapping"
        text.append(f"Activations of the {model} model: harmful and useful prompts span {verdict} subspaces "
                    f"(MSO {cross:.2f} across classes, {within:.2f} within a class).")
    if {"es2", "es2+benign"} <= set(benign):
        (before, sep_before), (after, sep_after) = benign["es2"], benign["es2+benign"]
        kept_sep = min(sep_after[l] / sep_before[l] for l in sep_before if sep_before[l] > 0)
        text.append(f"A benign fine-tune of ES2 moved its DSR under SCAV from {before:.2f} to {after:.2f} and kept "
                    f"at least {kept_sep:.0%} of its centroid separation at the ES2 layers.")
    return " ".join(text)
