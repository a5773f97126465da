"""The ES2 trainer (paper Section 3): minimise L = L_dist + lambda * KL at the ES2 layers under a KL guard.

Each step forwards a seeded batch of harmful and harmless prompts once, takes the objective of objective.py and
updates the adapter; training stops once a step's harmless KL exceeds `kl_threshold`, keeping the last weights
within it. The base quantities (state norms, next-token distributions) come from the network before the adapter
acts, so no second copy is held. Training resumes from atomic checkpoints of the same training: same knobs, data
and training code. See docs/architecture.md, 'ES2 objective'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import adapters, data, hooks, probes, representations, runs
from .objective import es2_loss, kl_divergence, refusal_ce
from .progress import progress as progress_bar
from .separation import states_and_logprobs

PACKAGE = Path(__file__).resolve().parent
# The library modules a training step runs through: an edit to any of them makes old checkpoints stale.
TRAINING_CODE = ("objective.py", "trainer.py", "adapters.py", "separation.py", "hooks.py", "batching.py",
                 "representations.py", "probes.py", "data.py", "models.py")


def code_hash(files: Iterable[Path] = tuple(PACKAGE / name for name in TRAINING_CODE)) -> str:
    """sha256 of the names and sources of the training code."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).name.encode() + b"\0" + Path(file).read_bytes() + b"\0")
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The knobs of one ES2 training; each field is the params key of the same name (es2_lib/params.py)."""

    model: str  # model spec (identifies the base model in the checkpoint key)
    dtype: str  # weights and compute dtype (likewise)
    seed: int  # adapter init and batch order
    batch_size: int  # prompts per forward when computing the base quantities
    kl_threshold: float  # stop once a step's harmless KL exceeds this
    es2_distance: str
    es2_margin: float
    es2_lambda_kl: float
    es2_retain: str  # "none" | "kl" | "refusal_ce"
    es2_retain_weight: float
    es2_refusal_data: str
    es2_refusal_tokens: int
    es2_adapter: str  # "lora" | "full"
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple[str, ...]
    es2_steps: int
    es2_lr: float
    es2_weight_decay: float
    es2_batch_size: int  # prompts per class per step
    es2_checkpoint_every: int  # 0: no checkpoints

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of these fields in a params mapping (e.g. `P.to_dict()`); other keys are ignored."""
        picked = {f.name: values[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**picked, "lora_targets": tuple(picked["lora_targets"])})

    def checkpoint_key(self) -> dict[str, Any]:
        """What a checkpoint must share with this training: every knob but the step budget and spacing."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in ("es2_steps", "es2_checkpoint_every")}


class ES2Trainer:
    """Trains `model` on the ES2 objective over `layers`; resumes from the latest checkpoint in `checkpoint_dir`.

    The base quantities (per-layer state norms, next-token distributions of the training prompts) are computed
    from `model` as passed, before any adapter is attached; `self.model` is the model being trained."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, harmful: list[str], harmless: list[str],
                 layers: list[int], config: TrainConfig, checkpoint_dir: str | Path | None = None):
        self.layers = hooks.check_layers(model, layers)
        if not harmful or not harmless:
            raise ValueError(f"ES2 needs harmful and harmless training prompts, got {len(harmful)} and {len(harmless)}")
        self.tokenizer, self.harmful, self.harmless, self.config = tokenizer, harmful, harmless, config
        c = config
        self.device = model.get_input_embeddings().weight.device
        model.eval()
        states, logp = states_and_logprobs(model, tokenizer, harmful + harmless, self.layers, c.batch_size)
        self.scale = probes.mean_norm(states).to(self.device)  # [layers]
        self.base_harmful_logp, self.base_harmless_logp = logp[:len(harmful)], logp[len(harmful):]  # [n, vocab]
        self.refusals = data.load_refusals(c.es2_refusal_data) if c.es2_retain == "refusal_ce" else []
        self.model = adapters.attach_adapter(model, c.es2_adapter, c.seed, c.lora_r, c.lora_alpha, c.lora_dropout,
                                             c.lora_targets)
        self.trainable = {n: w for n, w in self.model.named_parameters() if w.requires_grad}
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=c.es2_lr, weight_decay=c.es2_weight_decay)
        self.step, self.log, self.stopped = 0, [], None
        self.previous = self._snapshot()  # weights before the last update: kept when the KL guard fires
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.key = hashlib.sha256(json.dumps(  # a checkpoint resumes only the same training by the same code
            [c.checkpoint_key(), self.layers, harmful, harmless, code_hash()]).encode()).hexdigest()
        self.resume()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: w.detach().clone() for n, w in self.trainable.items()}

    def _indices(self, n: int, step: int, salt: int) -> list[int]:
        """Batch of step `step`: consecutive slices of seeded per-epoch permutations (every prompt used equally)."""
        b = self.config.es2_batch_size
        positions = [divmod(pos, n) for pos in range(step * b, step * b + b)]  # (epoch, index in epoch)
        orders = {epoch: self._permutation(n, epoch, salt) for epoch in {e for e, _ in positions}}
        return [orders[epoch][i] for epoch, i in positions]

    def _permutation(self, n: int, epoch: int, salt: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch * 3 + salt)
        return torch.randperm(n, generator=generator).tolist()

    def objective(self, harmful_states: torch.Tensor, harmless_states: torch.Tensor, harmless_logp: torch.Tensor,
                  base_harmless_logp: torch.Tensor, retain: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """objective.es2_loss with this training's scale and knobs."""
        c = self.config
        return es2_loss(harmful_states, harmless_states, self.scale, harmless_logp, base_harmless_logp, retain,
                        distance=c.es2_distance, margin=c.es2_margin, lambda_kl=c.es2_lambda_kl,
                        retain_weight=c.es2_retain_weight)

    def train_step(self) -> dict:
        """One step: forward both classes in one batch, the loss, then (unless the KL guard fires) an update."""
        start, c = time.perf_counter(), self.config
        h_idx, s_idx = self._indices(len(self.harmful), self.step, 0), self._indices(len(self.harmless), self.step, 1)
        batch = representations.encode_prompts(
            self.tokenizer, [self.harmful[i] for i in h_idx] + [self.harmless[i] for i in s_idx], self.device)
        self.model.train()
        states, logp = hooks.run_with_cache_and_logprobs(self.model, batch, self.layers)  # [2b, layers, hidden], [2b, vocab]
        b = len(h_idx)
        retain = torch.zeros((), device=self.device)
        if c.es2_retain == "kl":
            retain = kl_divergence(self.base_harmful_logp[h_idx].to(self.device), logp[:b]).mean()
        elif c.es2_retain == "refusal_ce":
            pairs = [self.refusals[i] for i in self._indices(len(self.refusals), self.step, 2)]
            retain = refusal_ce(self.model, self.tokenizer, pairs, c.es2_refusal_tokens)
        loss, parts = self.objective(states[:b], states[b:], logp[b:], self.base_harmless_logp[s_idx].to(self.device),
                                     retain)
        row = {"step": self.step, "loss": loss.item(), "separation": parts["distance"].sum().item(),
               **{k: v.item() if v.ndim == 0 else v.tolist() for k, v in parts.items()},
               "tokens": int(batch["attention_mask"].sum())}
        if row["kl"] > c.kl_threshold:  # the guard: stop and undo the update that crossed the threshold
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
        c = self.config
        steps = range(self.step, c.es2_steps) if self.stopped is None else range(0)
        bar = progress_bar(steps, desc="ES2 training") if progress else steps
        for _ in bar:
            row = self.train_step()
            if progress:
                bar.set_postfix(sep=f"{row['separation']:.2f}", kl=f"{row['kl']:.3f}", refresh=False)
            every = c.es2_checkpoint_every
            if self.stopped or (every and (self.step % every == 0 or self.step == c.es2_steps)):
                self.save_checkpoint()
            if self.stopped:
                break
        return self.log

    def save_checkpoint(self) -> Path | None:
        """Write adapter, previous weights, optimiser, RNG, step and log atomically; keep only the newest."""
        if self.checkpoint_dir is None:
            return None
        target = self.checkpoint_dir / f"step-{self.step:06d}"
        with runs.atomic_dir(target) as tmp:
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
        """Load the newest checkpoint in `checkpoint_dir` if it belongs to this training (same knobs, layers,
        prompts and training code); True when one was loaded. Other checkpoints are ignored and later replaced."""
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
        """Save the trained adapter into `target` (adapters.save_adapter)."""
        return adapters.save_adapter(self.model, target)
