"""One trainer for every arm (paper Section 3 for ES2; docs/architecture.md, 'Arms'): ES2, ES2 + retain, STL and RR
share the data, steps, optimiser, seed, layers and the KL guard; only the objective (objective.py) differs.

Each step forwards a seeded batch of harmful and harmless prompts once, takes the arm's objective and updates the
adapter. Every `kl_guard_every` steps the KL guard measures the harmless next-token KL on held-out prompts;
training stops once it exceeds `kl_threshold`, keeping the weights of the last check within it. The base
quantities (states, state norms, next-token distributions) come from the network before the adapter acts, so no
second copy is held. Training resumes from atomic checkpoints of the same training: same knobs, data and code.
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
from .objective import es2_loss, harmless_kl, kl_divergence, layer_distance, response_ce, rr_loss, rr_schedule
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


# Each arm: the objective and the retain term it trains with (a params key's name takes that key's value).
ARMS: dict[str, dict[str, str]] = {
    "es2": {"objective": "es2", "es2_retain": "none"},  # the paper's: separation + KL
    "es2_retain": {"objective": "es2", "es2_retain": "es2_retain"},  # + the retain term (our earlier default)
    "stl": {"objective": "stl", "es2_retain": "none"},  # SFT on safety responses + the same KL, no separation
    "rr": {"objective": "rr", "es2_retain": "none"},  # Circuit Breakers' rerouting + L2 retain, no KL term
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training of stage 02: an arm at a seed and ES2 layers; `name` is its key and folder name."""

    name: str  # "es2", "stl_seed1", "es2_3layers", ...
    arm: str  # a key of ARMS
    seed: int
    layers: tuple[int, ...]


def variants(arms: list[str], seed: int, layers: list[int], extra_seeds: list[int] = (), seeded_arms: list[str] = (),
             layer_sets: Mapping[int, list[int]] | None = None) -> list[Variant]:
    """Stage 02's trainings: each arm at `seed` and `layers`; each arm of `seeded_arms` that is an arm also at each
    of `extra_seeds`; and the es2 arm at each layer set of the layer-count ablation (`layer_sets[n]`: its n
    layers), unless a set equals `layers`."""
    out = [Variant(arm, arm, seed, tuple(layers)) for arm in arms]
    out += [Variant(f"{arm}_seed{s}", arm, s, tuple(layers)) for arm in arms if arm in seeded_arms
            for s in extra_seeds if s != seed]
    out += [Variant(f"es2_{n}layer{'s' if n != 1 else ''}", "es2", seed, tuple(chosen))
            for n, chosen in sorted((layer_sets or {}).items()) if list(chosen) != list(layers)]
    return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The knobs of one ES2 training; each field is the params key of the same name (es2_lib/params.py)."""

    model: str  # model spec (identifies the base model in the checkpoint key)
    dtype: str  # weights and compute dtype (likewise)
    seed: int  # adapter init and batch order
    batch_size: int  # prompts per forward when computing the base quantities
    kl_threshold: float  # stop once a step's harmless KL exceeds this
    objective: str  # "es2" | "stl" | "rr" (ARMS)
    es2_distance: str
    es2_margin: float
    es2_lambda_kl: float
    es2_kl: str  # KL direction: "tuned_base" | "base_tuned"
    kl_guard_every: int
    es2_retain: str  # "none" | "kl" | "refusal_ce"
    es2_retain_weight: float
    es2_refusal_data: str
    es2_refusal_tokens: int
    rr_retain_weight: float
    rr_init_std: float
    rr_lambda_kl: float
    rr_centred: bool
    es2_train_layers: str  # "all" | "up_to_deepest"
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
    def of(cls, values: Mapping[str, Any], arm: str) -> TrainConfig:
        """The config of arm `arm` (ARMS) from a params mapping (e.g. `P.to_dict()`); other keys are ignored."""
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
        overrides = {key: values[value] if value in values else value for key, value in ARMS[arm].items()}
        picked = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name not in overrides}
        return cls(**{**picked, **overrides, "lora_targets": tuple(values["lora_targets"])})

    def checkpoint_key(self) -> dict[str, Any]:
        """What a checkpoint must share with this training: every knob but the step budget and spacing."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in ("es2_steps", "es2_checkpoint_every")}


class ES2Trainer:
    """Trains `model` on one arm's objective over `layers`; resumes from the latest checkpoint in `checkpoint_dir`.

    `heldout` are harmless prompts outside training on which the KL guard measures the harmless KL. The base
    quantities are computed from `model` as passed, before any adapter is attached; `self.model` is the model
    being trained."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, harmful: list[str], harmless: list[str],
                 layers: list[int], config: TrainConfig, heldout: list[str], checkpoint_dir: str | Path | None = None):
        self.layers = hooks.check_layers(model, layers)
        if not harmful or not harmless or not heldout:
            raise ValueError(f"training needs harmful, harmless and held-out harmless prompts, got {len(harmful)}, "
                             f"{len(harmless)} and {len(heldout)}")
        self.tokenizer, self.harmful, self.harmless, self.heldout, self.config = tokenizer, harmful, harmless, heldout, config
        c = config
        self.device = model.get_input_embeddings().weight.device
        model.eval()
        states, logp = states_and_logprobs(model, tokenizer, harmful + harmless + heldout, self.layers, c.batch_size)
        n_h, n_s = len(harmful), len(harmless)
        self.scale = probes.mean_norm(states[:n_h + n_s]).to(self.device)  # [layers]
        self.base_states = states[:n_h + n_s]  # [n_h + n_s, layers, hidden] (RR's reference)
        self.centre = self.base_states.mean(0).to(self.device) if c.rr_centred else None  # [layers, hidden]
        self.base_logp = logp[:n_h + n_s]  # [n_h + n_s, vocab]
        self.base_heldout_logp = logp[n_h + n_s:]
        self.pairs = (data.load_refusals(c.es2_refusal_data) if c.es2_retain == "refusal_ce" else
                      data.load_refusals(c.es2_refusal_data, refusals_only=False) if c.objective == "stl" else [])
        blocks = None if c.es2_train_layers == "all" else list(range(max(self.layers)))  # layer l = block l-1's output
        self.model = adapters.attach_adapter(model, c.es2_adapter, c.seed, c.lora_r, c.lora_alpha, c.lora_dropout,
                                             c.lora_targets, blocks)
        if c.objective == "rr" and c.rr_init_std > 0:  # ReLU(cos(h, h_base)) is stationary at the base model
            adapters.perturb(self.model, c.rr_init_std, c.seed)
        self.trainable = {n: w for n, w in self.model.named_parameters() if w.requires_grad}
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=c.es2_lr, weight_decay=c.es2_weight_decay)
        self.step, self.log, self.stopped = 0, [], None
        self.kept, self.kept_step = self._snapshot(), 0  # the weights of the last guard check within the threshold
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.key = hashlib.sha256(json.dumps(  # a checkpoint resumes only the same training by the same code
            [c.checkpoint_key(), self.layers, harmful, harmless, heldout, code_hash()]).encode()).hexdigest()
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

    def _loss(self, states: torch.Tensor, logp: torch.Tensor, h_idx: list[int], s_idx: list[int]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The arm's objective on a batch: `states` [b_h + b_s, layers, hidden] and `logp` [b_h + b_s, vocab] of
        the harmful prompts `h_idx` then the harmless prompts `s_idx`."""
        c, b = self.config, len(h_idx)
        base_s = [len(self.harmful) + i for i in s_idx]
        kl = harmless_kl(self.base_logp[base_s].to(self.device), logp[b:], c.es2_kl).mean()
        if c.objective == "rr":
            reroute_weight, retain_weight = rr_schedule(self.step, c.es2_steps, c.rr_retain_weight)
            loss, parts = rr_loss(states[:b], self.base_states[h_idx].to(self.device), states[b:],
                                  self.base_states[base_s].to(self.device), self.scale, retain_weight, reroute_weight,
                                  self.centre)
            return loss + c.rr_lambda_kl * kl, {**parts, "kl": kl}
        pairs = [self.pairs[i] for i in self._indices(len(self.pairs), self.step, 2)] if self.pairs else []
        if c.objective == "stl":
            sft = response_ce(self.model, self.tokenizer, pairs, c.es2_refusal_tokens)
            return sft + c.es2_lambda_kl * kl, {"sft": sft, "kl": kl}
        retain = torch.zeros((), device=self.device)
        if c.es2_retain == "kl":
            retain = kl_divergence(self.base_logp[h_idx].to(self.device), logp[:b]).mean()
        elif c.es2_retain == "refusal_ce":
            retain = response_ce(self.model, self.tokenizer, pairs, c.es2_refusal_tokens)
        return es2_loss(states[:b], states[b:], self.scale, kl, retain, distance=c.es2_distance, margin=c.es2_margin,
                        lambda_kl=c.es2_lambda_kl, retain_weight=c.es2_retain_weight)

    def heldout_kl(self) -> float:
        """Mean harmless next-token KL (the objective's direction) of the model now on the held-out prompts."""
        logp = states_and_logprobs(self.model, self.tokenizer, self.heldout, self.layers[:1], self.config.batch_size)[1]
        return harmless_kl(self.base_heldout_logp, logp, self.config.es2_kl).mean().item()

    def train_step(self) -> dict:
        """One step: forward both classes in one batch, the arm's loss and an update; every `kl_guard_every`
        steps (and at the last) the KL guard, which undoes the updates since its last passing check if the
        held-out KL exceeds `kl_threshold`."""
        start, c = time.perf_counter(), self.config
        h_idx, s_idx = self._indices(len(self.harmful), self.step, 0), self._indices(len(self.harmless), self.step, 1)
        batch = representations.encode_prompts(
            self.tokenizer, [self.harmful[i] for i in h_idx] + [self.harmless[i] for i in s_idx], self.device)
        self.model.train()
        states, logp = hooks.run_with_cache_and_logprobs(self.model, batch, self.layers)  # [2b, layers, hidden], [2b, vocab]
        loss, parts = self._loss(states, logp, h_idx, s_idx)
        b = len(h_idx)
        with torch.no_grad():  # the separation every arm is judged by, and the state norms (1 = base mean)
            parts |= {"distance": layer_distance(states[:b].float(), states[b:].float(), self.scale, c.es2_distance),
                      "harmful_norm": states[:b].float().norm(dim=-1).mean(0) / self.scale,
                      "harmless_norm": states[b:].float().norm(dim=-1).mean(0) / self.scale}
        row = {"step": self.step, "loss": loss.item(), "separation": parts["distance"].sum().item(),
               **{k: v.item() if v.ndim == 0 else v.tolist() for k, v in parts.items()},
               "tokens": int(batch["attention_mask"].sum())}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.model.eval()
        if self.step % c.kl_guard_every == 0 or self.step == c.es2_steps:
            row["heldout_kl"] = self.heldout_kl()
            if row["heldout_kl"] > c.kl_threshold:  # the guard: back to the last weights within the threshold
                self._restore(self.kept)
                self.stopped = {"step": self.step, "heldout_kl": row["heldout_kl"], "kept_step": self.kept_step,
                                "reason": "kl_threshold"}
                self.step = self.kept_step
            else:
                self.kept, self.kept_step = self._snapshot(), self.step
        row["seconds"] = time.perf_counter() - start
        self.log.append(row)
        return row

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, w in self.trainable.items():
                w.copy_(weights[name])

    def train(self, progress: bool = True, desc: str = "training") -> list[dict]:
        """Run until `es2_steps` updates or the KL guard fires; checkpoints every `es2_checkpoint_every` steps."""
        c = self.config
        steps = range(self.step, c.es2_steps) if self.stopped is None else range(0)
        bar = progress_bar(steps, desc=desc) if progress else steps
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
        """Write adapter, kept weights, optimiser, RNG, step and log atomically; keep only the newest."""
        if self.checkpoint_dir is None:
            return None
        target = self.checkpoint_dir / f"step-{self.step:06d}"
        with runs.atomic_dir(target) as tmp:
            save_file({n: w.detach().contiguous().cpu() for n, w in self.trainable.items()}, str(tmp / "weights.safetensors"))
            save_file({n: w.contiguous().cpu() for n, w in self.kept.items()}, str(tmp / "kept.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       tmp / "state.pt")
            (tmp / "progress.json").write_text(json.dumps({"key": self.key, "step": self.step, "stopped": self.stopped,
                                                           "kept_step": self.kept_step, "log": self.log}))
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
        self.kept = load_file(str(latest / "kept.safetensors"), device=str(self.device))
        state = torch.load(latest / "state.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        saved = json.loads((latest / "progress.json").read_text())
        self.step, self.stopped, self.kept_step, self.log = saved["step"], saved["stopped"], saved["kept_step"], saved["log"]
        return True

    def save_adapter(self, target: str | Path) -> Path:
        """Save the trained adapter into `target` (adapters.save_adapter)."""
        return adapters.save_adapter(self.model, target)
