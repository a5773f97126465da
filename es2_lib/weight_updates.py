"""Weight-space updates, the objects the safety-subspace tests of Ponkshe et al. 2025 (arXiv 2505.14185) compare:
the merged change ΔW of each decoder matrix, kept factored as left @ right (LoRA: B·A·scaling) so its SVD costs a
QR of two thin factors; read from a LoRA model, a full fine-tune or a saved adapter, applied in place, summed.
See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn

from . import adapters, models

Factored = tuple[torch.Tensor, torch.Tensor]  # (left [out, r], right [r, in]): the matrix left @ right
Delta = Factored | torch.Tensor  # a decoder matrix's change, factored; any other parameter's change, dense
Update = dict[str, Delta]  # parameter name (as in the plain model) -> its change
RANK_TOL = 1e-6  # singular values below this share of the largest count as zero


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    """[r] bool: the singular values above RANK_TOL of the largest."""
    return s > RANK_TOL * s[0] if s.numel() and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)


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
    keep = _nonzero(s)
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
        tuned = adapters.load_tuned(model, adapter_dir)
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


def left_singular(delta: Factored) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors [out, rank] and singular values [rank] of left @ right, from QRs of the thin
    factors and the SVD of an r × r core; directions with singular value ~0 are dropped."""
    left, right = delta
    q_left, r_left = torch.linalg.qr(left.double())  # [out, r], [r, r]
    _, r_right = torch.linalg.qr(right.double().T)  # [in, r] (unused), [r, r]
    u, s, _ = torch.linalg.svd(r_left @ r_right.T)
    keep = _nonzero(s)
    return (q_left @ u[:, keep]).float(), s[keep].float()


def describe(update: Update) -> dict[str, float]:
    """The factored matrices an update changes, its total energy Σ‖ΔW‖²_F and the mean rank of its matrices."""
    matrices = [d for d in update.values() if isinstance(d, tuple)]
    return {"matrices": len(matrices), "energy": sum(energy(d) for d in update.values()),
            "mean_rank": sum(left_singular(d)[1].numel() for d in matrices) / max(1, len(matrices))}


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
