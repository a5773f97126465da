"""Linear probes and separation metrics on last-token representations (docs/architecture.md, 'Representations'
and 'Metrics').

ES2's premise (paper §1, after SCAV, Xu et al. 2024) is that harmful and harmless prompts are linearly separable
in the residual stream. This module fits one logistic-regression probe P(harmful | e) = σ(wᵀe + b) per layer,
measures its held-out accuracy by stratified cross-validation, computes the centroid distance and Fisher ratio
per layer, and chooses ES2's layers: the "semantic emergence" layers (the first whose held-out probe accuracy
reaches a threshold, 0.9 as SCAV's P1) and the terminal layers. Probe weights are returned for the raw
(unstandardised) states, so SCAV can apply them to the model's own hidden states.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _labelled(harmful: torch.Tensor, harmless: torch.Tensor, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [n_h + n_s, hidden] of one layer (float64) and labels (1 = harmful)."""
    x = torch.cat([harmful[:, layer], harmless[:, layer]]).double().numpy()
    y = np.r_[np.ones(len(harmful), dtype=int), np.zeros(len(harmless), dtype=int)]
    return x, y


def _probe(C: float, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def fit_probes(harmful: torch.Tensor, harmless: torch.Tensor, C: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """One probe per layer, fitted on all given states [n, layers, hidden] of each class.

    Returns weight [layers, hidden] and bias [layers] for the raw states (logit = states @ weight + bias); the
    probe itself is fitted on standardised states (better conditioned) and its weights mapped back."""
    _check_pair(harmful, harmless, minimum=1)
    n_layers, hidden = harmful.shape[1:]
    weight, bias = torch.zeros(n_layers, hidden), torch.zeros(n_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in range(n_layers):
            scaler, logistic = _probe(C, seed).fit(*_labelled(harmful, harmless, layer))
            w_std = logistic.coef_[0]  # [hidden]: weights on standardised states
            weight[layer] = torch.from_numpy(w_std / scaler.scale_)
            bias[layer] = float(logistic.intercept_[0] - np.sum(w_std * scaler.mean_ / scaler.scale_))
    return {"weight": weight, "bias": bias}


def heldout_accuracy(
    harmful: torch.Tensor, harmless: torch.Tensor, folds: int = 5, C: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """Held-out probe accuracy [layers]: mean over `folds`-fold stratified cross-validation (fewer folds when a
    class has fewer prompts than `folds`)."""
    _check_pair(harmful, harmless, minimum=2)
    cv = StratifiedKFold(n_splits=min(folds, len(harmful), len(harmless)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return torch.tensor([float(cross_val_score(_probe(C, seed), *_labelled(harmful, harmless, layer), cv=cv).mean())
                             for layer in range(harmful.shape[1])])


def _check_pair(harmful: torch.Tensor, harmless: torch.Tensor, minimum: int) -> None:
    if harmful.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise ValueError(f"expected states [n, layers, hidden] of equal layers and hidden size, got harmful "
                         f"{tuple(harmful.shape)} and harmless {tuple(harmless.shape)}")
    if min(len(harmful), len(harmless)) < minimum:
        raise ValueError(f"probes need at least {minimum} prompt(s) per class here, got {len(harmful)} harmful "
                         f"and {len(harmless)} harmless")


def probe_logits(probes: dict[str, torch.Tensor], states: torch.Tensor) -> torch.Tensor:
    """Probe logits [n, layers] of states [n, layers, hidden] (positive = harmful)."""
    return torch.einsum("nlh,lh->nl", states.double(), probes["weight"].double()).float() + probes["bias"]


def probe_accuracy(probes: dict[str, torch.Tensor], harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Accuracy [layers] of fitted probes on new states of each class."""
    correct = torch.cat([probe_logits(probes, harmful) > 0, probe_logits(probes, harmless) <= 0])  # [n, layers]
    return correct.float().mean(0)


def mean_norm(*states: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm [layers] of the states [n, layers, hidden] of all given groups together."""
    return torch.cat(states).float().norm(dim=-1).mean(0)


def centroid_distance(harmful: torch.Tensor, harmless: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """‖mean harmful − mean harmless‖ per layer [layers], divided by `scale` [layers] (default: the mean norm of
    these states, so layers and models are comparable; pass the base model's norms to compare models on its scale)."""
    scale = mean_norm(harmful, harmless) if scale is None else scale
    return (harmful.float().mean(0) - harmless.float().mean(0)).norm(dim=-1) / scale


def fisher_ratio(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Fisher ratio [layers] along the centroid-difference direction u: (uᵀ(μ_h − μ_s))² / (uᵀΣ_h u + uᵀΣ_s u).

    Scale-invariant: inflating all norms does not change it. Layers whose centroids coincide get 0."""
    harmful, harmless = harmful.double(), harmless.double()
    gap = harmful.mean(0) - harmless.mean(0)  # [layers, hidden]
    direction = gap / gap.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    proj_h = torch.einsum("nlh,lh->nl", harmful, direction)  # [n_h, layers]
    proj_s = torch.einsum("nlh,lh->nl", harmless, direction)
    between = (proj_h.mean(0) - proj_s.mean(0)) ** 2
    within = proj_h.var(0, unbiased=False) + proj_s.var(0, unbiased=False)
    ratio = torch.where(within > 0, between / within.clamp_min(1e-30), torch.zeros_like(between))
    return torch.where(gap.norm(dim=-1) > 0, ratio, torch.zeros_like(ratio)).float()


def separation_metrics(harmful: torch.Tensor, harmless: torch.Tensor, scale: torch.Tensor | None = None,
                       folds: int = 5, C: float = 1.0, seed: int = 0) -> dict[str, list[float]]:
    """Separation per layer of held-out states [n, layers, hidden] of each class: cross-validated probe accuracy,
    centroid distance (on `scale`, and on these states' own mean norm), Fisher ratio and the mean norms."""
    return {
        "accuracy": heldout_accuracy(harmful, harmless, folds, C, seed).tolist(),
        "centroid_distance": centroid_distance(harmful, harmless, scale).tolist(),
        "centroid_distance_own_norm": centroid_distance(harmful, harmless).tolist(),
        "fisher": fisher_ratio(harmful, harmless).tolist(),
        "harmful_norm": harmful.float().norm(dim=-1).mean(0).tolist(),
        "harmless_norm": harmless.float().norm(dim=-1).mean(0).tolist(),
    }


def check_layer_counts(n_layers: int, n_emergence: int, n_terminal: int) -> None:
    """Raise ValueError unless a model with decoder layers 1..n_layers has `n_emergence` and `n_terminal` of them."""
    if n_emergence > n_layers or n_terminal > n_layers:
        raise ValueError(f"asked for {n_emergence} emergence and {n_terminal} terminal layers of a model with "
                         f"decoder layers 1..{n_layers} (n_emergence_layers, n_terminal_layers)")


def choose_layers(accuracy: list[float], threshold: float, n_emergence: int, n_terminal: int) -> dict:
    """ES2 layers from held-out accuracy per layer 0..L (index = layer).

    Emergence: the first `n_emergence` decoder layers (1..L) whose accuracy >= threshold; if fewer reach it, the
    most accurate of the rest fill up (and `fallback` is True). Terminal: the last `n_terminal` layers L, L-1, ..."""
    n_layers = len(accuracy) - 1
    if n_layers < 1:
        raise ValueError(f"need accuracies for layers 0..L with L >= 1, got {len(accuracy)} value(s)")
    check_layer_counts(n_layers, n_emergence, n_terminal)
    decoder = range(1, n_layers + 1)
    emergence = [layer for layer in decoder if accuracy[layer] >= threshold][:n_emergence]
    fallback = len(emergence) < n_emergence
    if fallback:
        rest = sorted((layer for layer in decoder if layer not in emergence), key=lambda l: (-accuracy[l], l))
        emergence = sorted(emergence + rest[: n_emergence - len(emergence)])
    terminal = list(range(n_layers - n_terminal + 1, n_layers + 1))
    return {"es2_layers": sorted(set(emergence + terminal)), "emergence": emergence, "terminal": terminal,
            "fallback": fallback, "threshold": threshold}


def matched_layers(accuracy: list[float], threshold: float, n: int) -> dict:
    """ES2 layers from the held-out accuracy per layer 0..L of a wording-matched probe (harmful prompts vs safe
    look-alikes with the same words, e.g. XSTest), which wording alone cannot pass.

    Emergence: the first decoder layer whose accuracy >= threshold (if none, round(L/4), and `fallback` is True);
    peak: the most accurate decoder layer from there on; the `n` layers are spread evenly from emergence to peak
    (n = 1: the peak), or are the n layers from emergence on when that span is shorter than n."""
    n_layers = len(accuracy) - 1
    if not 1 <= n <= n_layers:
        raise ValueError(f"asked for {n} ES2 layers (n_es2_layers) of a model with decoder layers 1..{n_layers}")
    reached = [layer for layer in range(1, n_layers + 1) if accuracy[layer] >= threshold]
    emergence = reached[0] if reached else max(1, round(n_layers / 4))
    peak = max(range(emergence, n_layers + 1), key=lambda layer: (accuracy[layer], -layer))
    layers = [peak] if n == 1 else sorted({round(emergence + k * (peak - emergence) / (n - 1)) for k in range(n)})
    if len(layers) < n:
        start = min(emergence, n_layers - n + 1)
        layers = list(range(start, start + n))
    return {"es2_layers": layers, "emergence": emergence, "peak": peak, "fallback": not reached,
            "threshold": threshold}


def pca_2d(harmful: torch.Tensor, harmless: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """2-D PCA of one layer's states [n, hidden] of both classes: (harmful [n_h, 2], harmless [n_s, 2], explained
    variance ratios)."""
    pca = PCA(n_components=2, random_state=seed).fit(torch.cat([harmful, harmless]).double().numpy())
    return pca.transform(harmful.double().numpy()), pca.transform(harmless.double().numpy()), \
        pca.explained_variance_ratio_.tolist()
