"""ES2: fine-tune a chat model so harmful and harmless representations lie far apart (DESIGN.md §1; Zhao et al. 2026).

At the chosen layers (emergence + terminal, see probes.py) the last-prompt-token states of harmful prompts are
pushed away from those of harmless prompts, while KL(p_base ‖ p_ES2) of the next token on harmless prompts keeps
the model's ordinary behaviour; training stops once that KL exceeds `kl_threshold` (keeping the last weights
within it). The base distribution comes from the same network before the adapter acts (LoRA: the adapter is
disabled), so no second copy of the model is held. Reconstructed choices, all params keys: the distance
(`es2_distance`, `es2_margin`), the retain term on harmful prompts that keeps refusals (`es2_retain`), the
adapter and the optimiser settings. Training is resumable from atomic checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import evaluate, generation, judges, models, probes, representations
from .data import DATA_DIR
from .params import Params
from .progress import progress as progress_bar


# --- the objective -----------------------------------------------------------------------------------

def layer_distance(harmful: torch.Tensor, harmless: torch.Tensor, scale: torch.Tensor, distance: str) -> torch.Tensor:
    """Distance [layers] between harmful states [b_h, layers, hidden] and harmless states [b_s, layers, hidden].

    centroid: ‖mean h − mean s‖ / scale; pairwise: mean over pairs ‖h_i − s_j‖ / scale (scale [layers] = the base
    model's mean state norm per layer); bounded: ‖mean ĥ − mean ŝ‖ of unit-normalised states, in [0, 2], which
    inflating norms cannot raise."""
    if distance == "centroid":
        return (harmful.mean(0) - harmless.mean(0)).norm(dim=-1) / scale
    if distance == "pairwise":
        return torch.cdist(harmful.transpose(0, 1), harmless.transpose(0, 1)).mean((1, 2)) / scale
    if distance == "bounded":
        return (F.normalize(harmful, dim=-1).mean(0) - F.normalize(harmless, dim=-1).mean(0)).norm(dim=-1)
    raise ValueError(f"unknown es2_distance {distance!r}; expected 'centroid', 'pairwise' or 'bounded'")


def kl_divergence(base_logp: torch.Tensor, tuned_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_tuned) per row of log-probabilities [batch, vocab] -> [batch] (nats)."""
    return (base_logp.exp() * (base_logp - tuned_logp)).sum(-1)


def es2_loss(
    harmful_states: torch.Tensor,  # [b_h, layers, hidden] last-prompt-token states of harmful prompts
    harmless_states: torch.Tensor,  # [b_s, layers, hidden] the same for harmless prompts
    scale: torch.Tensor,  # [layers] the base model's mean state norm per ES2 layer
    harmless_logp: torch.Tensor,  # [b_s, vocab] next-token log-probs of the tuned model on harmless prompts
    base_harmless_logp: torch.Tensor,  # [b_s, vocab] the same under the base model
    retain: torch.Tensor,  # [] retain term on harmful prompts (0 when es2_retain = "none")
    p: Params,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = −Σ_layers min(d_l, margin) + λ·KL(base ‖ tuned)[harmless] + w·retain; margin 0 means no cap."""
    distance = layer_distance(harmful_states.float(), harmless_states.float(), scale, p.es2_distance)  # [layers]
    rewarded = distance.clamp(max=p.es2_margin) if p.es2_margin > 0 else distance  # the hinge stops rewarding
    kl = kl_divergence(base_harmless_logp, harmless_logp).mean()  # []
    loss = -rewarded.sum() + p.es2_lambda_kl * kl + p.es2_retain_weight * retain
    return loss, {"distance": distance, "kl": kl, "retain": retain,
                  "harmful_norm": harmful_states.float().norm(dim=-1).mean(0) / scale,  # [layers], 1 = base mean
                  "harmless_norm": harmless_states.float().norm(dim=-1).mean(0) / scale}


# --- forward passes ----------------------------------------------------------------------------------

def last_token_forward(model: nn.Module, batch, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: states [batch, len(layers), hidden] at the last prompt token (layer convention of
    representations.py) and next-token log-probs [batch, vocab] there (float32; the lm_head runs on that
    position only)."""
    layers = representations.check_layers(model, layers)
    n_layers = models.num_layers(model)
    decoder, head = models.decoder_and_head(model)
    captured: dict[str, torch.Tensor] = {}
    hook = models.decoder_layers(model)[-1].register_forward_hook(  # layer L is the last block's raw output
        lambda module, args, out: captured.update(last=(out[0] if isinstance(out, tuple) else out)[:, -1]))
    mask = batch["attention_mask"]
    try:
        out = decoder(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True,
                      position_ids=representations.position_ids(mask), use_cache=False)
    finally:
        hook.remove()
    states = torch.stack([captured["last"] if layer == n_layers else out.hidden_states[layer][:, -1]
                          for layer in layers], dim=1)
    return states, head(out.last_hidden_state[:, -1]).float().log_softmax(-1)


@torch.no_grad()
def states_and_logprobs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layers: list[int],
                        batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """`last_token_forward` over many prompts in batches: states [n, len(layers), hidden] and next-token
    log-probs [n, vocab], float32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    states, logp = [], []
    for start in range(0, len(prompts), batch_size):
        batch = representations.encode_prompts(tokenizer, prompts[start:start + batch_size], device)
        s, lp = last_token_forward(model, batch, layers)
        states.append(s.float().cpu())
        logp.append(lp.cpu())
    return torch.cat(states), torch.cat(logp)


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                        batch_size: int = 8) -> torch.Tensor:
    """Next-token log-probs [n, vocab] after each chat-formatted prompt, float32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    decoder, head = models.decoder_and_head(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = representations.encode_prompts(tokenizer, prompts[start:start + batch_size], device)
        mask = batch["attention_mask"]
        hidden = decoder(**batch, position_ids=representations.position_ids(mask), use_cache=False).last_hidden_state
        out.append(head(hidden[:, -1]).float().log_softmax(-1).cpu())
    return torch.cat(out)


def load_refusals(path: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(instruction, response) pairs of a JSON list of {instruction, input, output} (relative paths are below
    data/) whose response the paper's keyword judge counts as a refusal."""
    file = Path(path) if Path(path).is_absolute() else DATA_DIR / path
    rows = json.loads(file.read_text(encoding="utf-8"))
    pairs = [("\n\n".join(filter(None, [r["instruction"], r.get("input", "")])), r["output"]) for r in rows]
    return [pair for pair in pairs if judges.is_refusal(pair[1])][:limit]


def refusal_ce(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]],
               n_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of the first `n_tokens` tokens of each refusal after its chat prompt (teacher forcing)."""
    device = model.get_input_embeddings().weight.device
    rows = [(tokenizer(models.chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"],
             tokenizer(a, add_special_tokens=False)["input_ids"][:n_tokens]) for q, a in pairs]
    width, n_resp = max(len(q) + len(a) for q, a in rows), max(len(a) for _, a in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(q) - len(a)) + q + a for q, a in rows], device=device)
    mask = torch.tensor([[0] * (width - len(q) - len(a)) + [1] * (len(q) + len(a)) for q, a in rows], device=device)
    targets = torch.tensor([[-100] * (n_resp - len(a)) + a for _, a in rows], device=device)  # [b, n_resp]
    decoder, head = models.decoder_and_head(model)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=representations.position_ids(mask),
                     use_cache=False).last_hidden_state  # [b, width, hidden]
    logits = head(hidden[:, -n_resp - 1:-1]).float()  # [b, n_resp, vocab]: only the response positions
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)


# --- adapters ----------------------------------------------------------------------------------------

def attach_adapter(model: nn.Module, p: Params) -> nn.Module:
    """A LoRA-wrapped PeftModel (only the adapter trains), or the model itself with every weight trainable."""
    torch.manual_seed(p.seed)
    if p.es2_adapter == "lora":
        config = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                            target_modules=list(p.lora_targets), task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    for weight in model.parameters():
        weight.requires_grad_(True)
    return model


@contextlib.contextmanager
def base_model(model: nn.Module) -> Iterator[nn.Module]:
    """The base network: a PeftModel with its adapter disabled (no second copy); other models cannot."""
    if not isinstance(model, PeftModel):
        raise TypeError("the base model of a fully fine-tuned model is gone: compute base quantities before training")
    with model.disable_adapter():
        yield model


def base_perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str],
                    batch_size: int = 8) -> list[float] | None:
    """Perplexity of each response under the base model (the adapter disabled); None after full fine-tuning."""
    if not isinstance(model, PeftModel):
        return None
    with base_model(model):
        return evaluate.response_perplexity(model, tokenizer, prompts, responses, batch_size)


def load_tuned(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply a saved ES2 adapter to a freshly loaded base model; returns it in eval mode (a PeftModel for LoRA,
    so `model.disable_adapter()` gives the base back; the model itself with the tuned weights for full tuning)."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(model, adapter_dir).eval()
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds neither a peft adapter nor safetensors weights")
    expected = set(model.state_dict())
    for file in files:
        weights = load_file(str(file))
        unknown = set(weights) - expected
        if unknown:
            raise ValueError(f"{file} holds weights the model lacks, e.g. {sorted(unknown)[0]!r}")
        model.load_state_dict(weights, strict=False)
    return model.eval()


def _atomic_dir(target: Path) -> contextlib.AbstractContextManager[Path]:
    """Write a folder under a temporary name and move it onto `target` when the block succeeds."""
    @contextlib.contextmanager
    def writer() -> Iterator[Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            old = target.parent / f".{target.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return writer()


# --- the trainer -------------------------------------------------------------------------------------

class ES2Trainer:
    """Trains `model` on the ES2 objective over `layers`; resumes from the latest checkpoint in `checkpoint_dir`.

    The base quantities (per-layer state norms, next-token distributions of the training prompts) are computed
    from `model` as passed, before any adapter is attached; `self.model` is the model being trained."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, harmful: list[str], harmless: list[str],
                 layers: list[int], p: Params, checkpoint_dir: str | Path | None = None):
        self.layers = representations.check_layers(model, layers)
        if not harmful or not harmless:
            raise ValueError(f"ES2 needs harmful and harmless training prompts, got {len(harmful)} and {len(harmless)}")
        self.tokenizer, self.harmful, self.harmless, self.p = tokenizer, harmful, harmless, p
        self.device = model.get_input_embeddings().weight.device
        model.eval()
        states, logp = states_and_logprobs(model, tokenizer, harmful + harmless, self.layers, p.batch_size)
        self.scale = probes.mean_norm(states).to(self.device)  # [layers]
        self.base_harmful_logp, self.base_harmless_logp = logp[:len(harmful)], logp[len(harmful):]  # [n, vocab]
        self.refusals = load_refusals(p.es2_refusal_data) if p.es2_retain == "refusal_ce" else []
        self.model = attach_adapter(model, p)
        self.trainable = {n: w for n, w in self.model.named_parameters() if w.requires_grad}
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=p.es2_lr, weight_decay=p.es2_weight_decay)
        self.step, self.log, self.stopped = 0, [], None
        self.previous = self._snapshot()  # weights before the last update: kept when the KL guard fires
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        training = {k: v for k, v in p.to_dict().items()  # more steps or other checkpoint spacing may resume
                    if k.startswith(("es2_", "lora_")) and k not in ("es2_steps", "es2_checkpoint_every")}
        self.key = hashlib.sha256(json.dumps(  # a checkpoint resumes only the same training
            [training, p.kl_threshold, p.seed, p.model, p.dtype, self.layers, harmful, harmless]).encode()).hexdigest()
        self.resume()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: w.detach().clone() for n, w in self.trainable.items()}

    def _indices(self, n: int, step: int, salt: int) -> list[int]:
        """Batch of step `step`: consecutive slices of seeded per-epoch permutations (every prompt used equally)."""
        b = self.p.es2_batch_size
        positions = [divmod(pos, n) for pos in range(step * b, step * b + b)]  # (epoch, index in epoch)
        orders = {epoch: self._permutation(n, epoch, salt) for epoch in {e for e, _ in positions}}
        return [orders[epoch][i] for epoch, i in positions]

    def _permutation(self, n: int, epoch: int, salt: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.p.seed * 1_000_003 + epoch * 3 + salt)
        return torch.randperm(n, generator=generator).tolist()

    def train_step(self) -> dict:
        """One step: forward both classes in one batch, the loss, then (unless the KL guard fires) an update."""
        start = time.perf_counter()
        h_idx, s_idx = self._indices(len(self.harmful), self.step, 0), self._indices(len(self.harmless), self.step, 1)
        batch = representations.encode_prompts(
            self.tokenizer, [self.harmful[i] for i in h_idx] + [self.harmless[i] for i in s_idx], self.device)
        self.model.train()
        states, logp = last_token_forward(self.model, batch, self.layers)  # [2b, layers, hidden], [2b, vocab]
        b = len(h_idx)
        retain = torch.zeros((), device=self.device)
        if self.p.es2_retain == "kl":
            retain = kl_divergence(self.base_harmful_logp[h_idx].to(self.device), logp[:b]).mean()
        elif self.p.es2_retain == "refusal_ce":
            pairs = [self.refusals[i] for i in self._indices(len(self.refusals), self.step, 2)]
            retain = refusal_ce(self.model, self.tokenizer, pairs, self.p.es2_refusal_tokens)
        loss, parts = es2_loss(states[:b], states[b:], self.scale, logp[b:],
                               self.base_harmless_logp[s_idx].to(self.device), retain, self.p)
        row = {"step": self.step, "loss": loss.item(), "separation": parts["distance"].sum().item(),
               **{k: v.item() if v.ndim == 0 else v.tolist() for k, v in parts.items()},
               "tokens": int(batch["attention_mask"].sum())}
        if row["kl"] > self.p.kl_threshold:  # the guard: stop and undo the update that crossed the threshold
            self._restore(self.previous)
            self.stopped = {"step": self.step, "kl": row["kl"], "reason": "kl_threshold"}
            self.step = max(self.step - 1, 0)  # updates kept
        else:
            self.previous = self._snapshot()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
        self.model.eval()
        row["seconds"] = time.perf_counter() - start
        self.log.append(row)
        return row

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, w in self.trainable.items():
                w.copy_(weights[name])

    def train(self, progress: bool = True) -> list[dict]:
        """Run until `es2_steps` updates or the KL guard fires; checkpoints every `es2_checkpoint_every` steps."""
        steps = range(self.step, self.p.es2_steps) if self.stopped is None else range(0)
        bar = progress_bar(steps, desc="ES2 training") if progress else steps
        for _ in bar:
            row = self.train_step()
            if progress:
                bar.set_postfix(sep=f"{row['separation']:.2f}", kl=f"{row['kl']:.3f}", refresh=False)
            every = self.p.es2_checkpoint_every
            if self.stopped or (every and (self.step % every == 0 or self.step == self.p.es2_steps)):
                self.save_checkpoint()
            if self.stopped:
                break
        return self.log

    # --- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write adapter, previous weights, optimiser, RNG, step and log atomically; keep only the newest."""
        if self.checkpoint_dir is None:
            return None
        target = self.checkpoint_dir / f"step-{self.step:06d}"
        with _atomic_dir(target) as tmp:
            save_file({n: w.detach().contiguous().cpu() for n, w in self.trainable.items()}, str(tmp / "weights.safetensors"))
            save_file({n: w.contiguous().cpu() for n, w in self.previous.items()}, str(tmp / "previous.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       tmp / "state.pt")
            (tmp / "progress.json").write_text(json.dumps({"key": self.key, "step": self.step, "stopped": self.stopped,
                                                           "log": self.log}))
        for old in self.checkpoint_dir.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def resume(self) -> bool:
        """Load the newest checkpoint in `checkpoint_dir` if it belongs to this training (same params, layers and
        prompts); True when one was loaded. Checkpoints of another training are ignored and later replaced."""
        found = sorted(self.checkpoint_dir.glob("step-*")) if self.checkpoint_dir else []
        if not found or json.loads((found[-1] / "progress.json").read_text()).get("key") != self.key:
            return False
        latest = found[-1]
        weights = load_file(str(latest / "weights.safetensors"), device=str(self.device))
        if set(weights) != set(self.trainable):
            raise ValueError(f"checkpoint {latest} does not match this model and adapter (different trainable "
                             f"weights): delete {self.checkpoint_dir} to start afresh")
        self._restore(weights)
        self.previous = load_file(str(latest / "previous.safetensors"), device=str(self.device))
        state = torch.load(latest / "state.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        saved = json.loads((latest / "progress.json").read_text())
        self.step, self.stopped, self.log = saved["step"], saved["stopped"], saved["log"]
        return True

    def save_adapter(self, target: str | Path) -> Path:
        """Save the trained adapter (peft format; full weights for full fine-tuning) atomically into `target`."""
        target = Path(target)
        with _atomic_dir(target) as tmp:
            self.model.save_pretrained(tmp)
        return target


# --- held-out evaluation: base vs ES2 ----------------------------------------------------------------

def measure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, list[str]], p: Params,
            reference: list[str] | None = None) -> dict:
    """What 02 compares between base and ES2 on the held-out prompts `prompts["harmful"|"harmless"]`: last-token
    states at every layer 0..L, greedy responses, next-token log-probs after the harmless prompts, and the
    perplexity under `model` of the harmless `reference` responses (default: its own)."""
    layers = list(range(models.num_layers(model) + 1))
    classes = ("harmful", "harmless")
    states = {c: representations.last_token_states(model, tokenizer, prompts[c], layers, p.batch_size) for c in classes}
    responses = {c: generation.generate(model, tokenizer, prompts[c], p.max_new_tokens, p.batch_size, progress=True)
                 for c in classes}
    harmless = prompts["harmless"]
    return {"states": states, "responses": responses,
            "harmless_logp": next_token_logprobs(model, tokenizer, harmless, p.batch_size),
            "harmless_ppl": evaluate.response_perplexity(model, tokenizer, harmless, reference or responses["harmless"],
                                                         p.batch_size)}


def compare(base: dict, tuned: dict, layers: list[int], p: Params) -> dict:
    """Separation per layer on the held-out states (cross-validated probe accuracy; centroid distance on the base
    model's scale and on each model's own; Fisher ratio), the ES2/base ratios at the ES2 `layers`, harmless
    next-token KL(base ‖ ES2) and perplexity, and the refusal rates of the harmless responses."""
    scale = probes.mean_norm(base["states"]["harmful"], base["states"]["harmless"])
    separation = {name: probes.separation_metrics(m["states"]["harmful"], m["states"]["harmless"], scale,
                                                  p.probe_folds, p.probe_C, p.seed)
                  for name, m in (("base", base), ("es2", tuned))}
    ratio = {key: [separation["es2"][key][l] / max(separation["base"][key][l], 1e-12) for l in layers]
             for key in ("centroid_distance", "centroid_distance_own_norm", "fisher")}
    kl = kl_divergence(base["harmless_logp"], tuned["harmless_logp"])  # [n]
    ppl = {name: torch.tensor(m["harmless_ppl"]).nanmedian().item() for name, m in (("base", base), ("es2", tuned))}
    ppl = {name: None if math.isnan(value) else value for name, value in ppl.items()}  # no scorable response
    return {"es2_layers": layers, "separation": separation, "ratio_at_es2_layers": ratio,
            "harmless_kl": {"mean": kl.mean().item(), "max": kl.max().item(), "threshold": p.kl_threshold},
            "harmless_ppl_median": ppl,
            "harmless_refusal": {name: sum(judges.refusals(m["responses"]["harmless"])) / len(m["responses"]["harmless"])
                                 for name, m in (("base", base), ("es2", tuned))}}
