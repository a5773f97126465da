"""Typed run parameters: one flat schema with defaults, loaded from a YAML file plus overrides.

Every knob of the pipeline (model, data sizes, layers, budgets, and each reconstructed choice of
DESIGN.md §1) is a field here. The schema is flat because papermill injects a params file's top-level
keys as notebook variables (`papermill -f params/default.yaml`). An unknown key or a value of the wrong
type is an error that names the file, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml


class ParamsError(ValueError):
    """A params file or override is malformed."""


@dataclasses.dataclass(frozen=True)
class Params:
    # --- run and model -------------------------------------------------------------------------
    name: str = "default"  # run name: results in runs/<name>/, figures in figures/<name>/
    model: str = "embedded"  # "embedded", "tiny", "random:<dir with config.json>", a local folder, or a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    seed: int = 0  # one seed for python, numpy and torch
    batch_size: int = 8  # prompts per forward pass or generation batch
    max_new_tokens: int = 48  # greedy response length used for judging
    # --- data splits (DESIGN.md §3) -----------------------------------------------------------------
    harmful_prompts: str = "advbench"  # a bundled set name or a CSV/JSONL file with a `prompt` column
    harmless_prompts: str = "alpaca"  # a bundled set name or a CSV/JSONL file with a `prompt` column
    n_probe_train: int = 64  # prompts per class in the probe-train split
    n_es2_train: int = 64  # prompts per class in the ES2-train split
    n_eval: int = 24  # prompts per class in the eval split
    # --- judge and metrics (DESIGN.md §5) -----------------------------------------------------------
    bootstrap_samples: int = 1000  # resamples for bootstrap confidence intervals
    confidence: float = 0.95  # confidence level of reported intervals
    incoherent_ppl: float = 100.0  # a response whose perplexity under the base model exceeds this is incoherent
    # --- probing and ES2 (issue 3) ---------------------------------------------------------------------
    probe_threshold: float = 0.9  # held-out probe accuracy from which a layer separates the classes (SCAV's P1)
    probe_folds: int = 5  # cross-validation folds on probe_train for the held-out probe accuracy
    probe_C: float = 1.0  # inverse L2 strength of the logistic-regression probes (fitted on standardised states)
    n_emergence_layers: int = 1  # ES2 layers from the first layers whose probe accuracy >= probe_threshold
    n_terminal_layers: int = 1  # ES2 layers from the last decoder layers (L, L-1, ...)
    es2_distance: Literal["centroid", "pairwise", "bounded"] = "centroid"  # centroid/pairwise: Euclidean / base mean norm; bounded: centroids of unit-normalised states
    es2_margin: float = 0.0  # hinge: a layer's distance stops being rewarded above this (0 = no hinge)
    es2_lambda_kl: float = 2.0  # weight of KL(base || ES2) of the next token on harmless prompts
    kl_threshold: float = 0.1  # stop training when the harmless KL (nats) of a step's batch exceeds this
    es2_retain: Literal["none", "kl", "refusal_ce"] = "refusal_ce"  # keep refusals: next-token KL to the base on harmful prompts, or CE on refusals
    es2_retain_weight: float = 0.5  # weight of the retain term
    es2_refusal_data: str = "safety_tuned_llamas/safety_only_data_Instructions.json"  # refusal_ce: {instruction, output} pairs (below data/), those judged refusals
    es2_refusal_tokens: int = 16  # refusal_ce: response tokens scored per refusal example
    es2_adapter: Literal["lora", "full"] = "lora"  # LoRA through peft, or full fine-tuning
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj", "o_proj"])  # module names that get LoRA
    es2_steps: int = 30  # maximum optimiser steps
    es2_lr: float = 2e-4  # AdamW learning rate (constant)
    es2_weight_decay: float = 0.0  # AdamW weight decay
    es2_batch_size: int = 8  # prompts per class per step
    es2_checkpoint_every: int = 10  # steps between resumable checkpoints (0 = none)

    # --- capability (issue 6) --------------------------------------------------------------------------
    mmlu_pro_per_category: int = 3  # MMLU-Pro questions per category (14 categories), seeded; 0 = all 12,032
    gpqa_n: int = 20  # GPQA diamond questions, seeded subset; 0 = all 198
    capability_answer_prefix: str = "The answer is ("  # assistant text before the scored option letter ("" = none)
    capability_generate: bool = False  # also answer by greedy generation, read with MMLU-Pro's answer extraction
    capability_max_new_tokens: int = 32  # response length for generated answers and for XSTest responses
    capability_batch_size: int = 8  # questions or prompts per forward pass / generation batch in stage 05
    capability_margin: float = 0.02  # the paper's "comparable capability": ES2 at most this far below base
    xstest_n_safe: int = 40  # XSTest safe prompts for over-refusal, seeded subset; 0 = all 250
    xstest_n_unsafe: int = 20  # XSTest unsafe prompts for refusal, seeded subset; 0 = all 200
    # --- embedding attacks (issue 4) -----------------------------------------------------------------
    n_attack: int = 12  # harmful prompts attacked per (model, attack): the first n_attack of the eval split
    repe_layers: list[int] = dataclasses.field(default_factory=list)  # RepE: decoder layers steered; empty = the band repe_depth
    repe_depth: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.75])  # RepE: band [from, to] as fractions of depth L
    repe_coeffs: list[float] = dataclasses.field(default_factory=lambda: [-0.05, -0.1, -0.2])  # RepE sweep: add coeff x (base mean state norm) x unit direction (harmless->harmful)
    soft_prompt_tokens: int = 20  # soft prompt: control embeddings after the instruction
    soft_prompt_steps: int = 12  # soft prompt: maximum signed-gradient steps (stops once the target is reproduced)
    soft_prompt_step_size: float = 0.01  # soft prompt: step alpha of c <- c - alpha * sign(grad)
    scav_p0: float = 0.001  # SCAV: move a state where P(harmful) > P0 until P(harmful) = P0
    scav_p1: float = 0.9  # SCAV: only at layers whose held-out probe accuracy > P1
    # --- SRR (issue 9): Safety Representation Ranking, Du et al. 2025 -------------------------------------
    srr_sources: list[Literal["harmful_train", "harmful_eval", "jailbroken", "prompt_attacks"]] = dataclasses.field(
        default_factory=lambda: ["harmful_train", "harmful_eval", "jailbroken", "prompt_attacks"])  # harmful prompt sources: probe_train split, eval split, hidden-context jailbreaks, notebook 04's attack prompts (skipped when absent)
    srr_n_per_source: int = 8  # prompts per source, seeded subset (0 = all)
    srr_train_per_source: int = 4  # prompts per source whose lists train the ranker (the paper uses 50); the rest test it
    srr_n_xstest: int = 8  # XSTest safe prompts for over-refusal (lists never trained on), seeded subset; 0 = all 250
    srr_max_prompt_tokens: int = 256  # leave out prompts longer than this in the chat template (long jailbreak templates); 0 = no limit
    srr_k: int = 4  # candidate responses sampled per prompt
    srr_temperature: float = 1.0  # sampling temperature (plain temperature sampling: no top-k or top-p)
    srr_max_new_tokens: int = 32  # candidate length in tokens
    srr_safe: Literal["refused", "harm_free"] = "refused"  # ranking label "safe": refused (keyword judge), or refused or incoherent
    srr_layer: int = -1  # feature layer; -1 = L // 4, the top of the bottom quarter of the layers (the paper's choice)
    srr_ablation_depths: list[float] = dataclasses.field(default_factory=lambda: [0.125, 0.25, 0.5, 0.75, 1.0])  # layer ablation (base model): layers at these fractions of depth L; empty = none
    srr_hidden: int = 64  # width of the ranker's one-layer transformer encoder
    srr_heads: int = 4  # attention heads of that layer (must divide srr_hidden)
    srr_tau: float = 0.1  # temperature of the listwise softmax: score = cosine / tau
    srr_steps: int = 200  # full-batch Adam steps on the training lists
    srr_lr: float = 1e-3  # Adam learning rate
    srr_likelihood: Literal["mean", "total"] = "mean"  # baseline "model's own pick": highest mean log-prob per token, or highest total
    # --- prompt attacks (issue 5): GCG and AutoDAN-HGA. Defaults are the tiny CPU budget; paper budgets in the GPU files
    n_prompt_attack: int = 8  # harmful prompts attacked by GCG and AutoDAN: the first of the eval split
    gcg_steps: int = 6  # GCG: maximum steps per prompt (paper: 500; the CPU default is far smaller)
    gcg_topk: int = 64  # GCG: candidate tokens per suffix position, by the one-hot gradient (paper: 256)
    gcg_search_width: int = 16  # GCG: single-token swaps scored per step (paper: 512)
    gcg_suffix_tokens: int = 20  # GCG: adversarial suffix length in tokens, initialised to "! ! ..."
    gcg_batch_size: int = 4  # GCG: candidates per forward pass, sorted by swapped position (smaller: more cache reuse; larger: better GPU use)
    gcg_check_every: int = 3  # GCG: steps between success checks (short greedy response, keyword judge); stops at the first success
    gcg_screen_dtype: Literal["bfloat16", "float16"] | None = "bfloat16"  # GCG: dtype of a model copy that ranks the candidates before the model scores the shortlist (null or the model's dtype: no copy; float16 is slow on CPUs)
    gcg_screen_margin: float = 0.02  # GCG: candidates within this of the screened minimum get an exact score (larger: safer, slower)
    autodan_population: int = 6  # AutoDAN: templates per generation (paper: 256)
    autodan_steps: int = 2  # AutoDAN: maximum generations per prompt (paper: 100)
    autodan_elite_frac: float = 0.05  # AutoDAN: share of elites kept unchanged (at least one; paper: 0.05)
    autodan_crossover: float = 0.5  # AutoDAN: crossover probability per parent pair, and word-replacement probability per word
    autodan_mutation: float = 0.01  # AutoDAN: probability that a child is mutated (LLM-free synonym replacement)
    autodan_crossover_every: int = 5  # AutoDAN: sentence-level crossover every this many generations, word-level otherwise
    autodan_check_every: int = 1  # AutoDAN: generations between success checks; stops at the first success
    attack_check_tokens: int = 32  # new tokens of the greedy response of a success check
    # --- safety subspaces (issue 8): Ponkshe et al. 2025's tests on our models, turned on ES2 ----------------
    subspace_sft_steps: int = 8  # useful (Code Alpaca) and harmful (hidden_context unsafe) fine-tunes: steps each, adapter as es2_adapter
    subspace_sft_batch_size: int = 2  # pairs per fine-tuning step (also of the benign fine-tune)
    subspace_sft_lr: float = 1e-3  # AdamW learning rate (constant) of every fine-tune of this stage
    subspace_sft_response_tokens: int = 32  # response tokens scored per pair (cross-entropy on the response only)
    subspace_sft_prompt_tokens: int = 96  # only pairs whose chat prompt has at most this many tokens are drawn
    subspace_energy_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9, 0.99])  # energy a basis captures, for MSO
    subspace_projection_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.25, 0.5, 0.75, 0.99])  # k = ceil(fraction x rank) of ES2's singular directions
    subspace_eval_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.99])  # projection fractions whose projected models are evaluated (subset of the above)
    subspace_n_eval_dsr: int = 8  # harmful eval prompts (the first of the eval split) for the DSRs of this stage
    subspace_max_new_tokens: int = 24  # greedy response length for the DSRs of this stage
    subspace_mmlu_per_category: int = 1  # MMLU-Pro questions per category (14 categories) for each evaluated model
    subspace_n_activation: int = 24  # harmful (AdvBench, not ES2-trained) and useful (Code Alpaca) prompts each, for activation MSO
    subspace_activation_depth: list[float] = dataclasses.field(default_factory=lambda: [0.65, 0.9])  # decoder layers at these fractions of depth
    subspace_benign_ft_steps: int = 8  # benign Code Alpaca fine-tune of the ES2 model: steps of subspace_sft_batch_size pairs
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Resolved type hint of every field."""
        return typing.get_type_hints(cls)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Params:
        """A copy with some fields changed, validated like a file."""
        return from_mapping({**self.to_dict(), **overrides}, source="overrides")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "None" if tp is type(None) else tp.__name__


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Ints given for float fields become floats; lists stay lists."""
    if tp is float and isinstance(value, int):
        return float(value)
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] is float:
        return [float(v) for v in value]
    return value


def from_mapping(values: Mapping[str, Any], source: str = "<params>") -> Params:
    """Validate a mapping against the schema; missing keys take their defaults."""
    hints = Params.field_types()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are listed in es2_lib/params.py"
        )
    checked = {}
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ParamsError(
                f"{source}: key {key!r} expects {_type_name(hints[key])}, "
                f"got {type(value).__name__} {value!r}"
            )
        checked[key] = _coerce(value, hints[key])
    params = Params(**checked)
    _check_ranges(params, source)
    return params


def _check_ranges(p: Params, source: str) -> None:
    positive = ["batch_size", "max_new_tokens", "n_probe_train", "n_es2_train", "n_eval", "bootstrap_samples"]
    for key in positive:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["probe_folds", "lora_r", "es2_steps", "es2_batch_size", "es2_refusal_tokens"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["n_emergence_layers", "n_terminal_layers", "es2_checkpoint_every"]:
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative int, got {getattr(p, key)!r}")
    if p.n_emergence_layers + p.n_terminal_layers == 0:
        raise ParamsError(f"{source}: n_emergence_layers + n_terminal_layers must choose at least one ES2 layer")
    for key in ["es2_margin", "es2_lambda_kl", "es2_retain_weight", "es2_weight_decay", "probe_C", "es2_lr",
                "kl_threshold", "lora_alpha"]:
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative number, got {getattr(p, key)!r}")
    if not 0.5 <= p.probe_threshold <= 1.0:
        raise ParamsError(f"{source}: key 'probe_threshold' expects a float in [0.5, 1], got {p.probe_threshold!r}")
    if not 0.0 <= p.lora_dropout < 1.0:
        raise ParamsError(f"{source}: key 'lora_dropout' expects a float in [0, 1), got {p.lora_dropout!r}")
    for key in ["mmlu_pro_per_category", "gpqa_n", "xstest_n_safe", "xstest_n_unsafe"]:  # capability (issue 6)
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative int (0 = all), got {getattr(p, key)!r}")
    for key in ["capability_max_new_tokens", "capability_batch_size"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    if not 0.0 <= p.capability_margin < 1.0:
        raise ParamsError(f"{source}: key 'capability_margin' expects a float in [0, 1), got {p.capability_margin!r}")
    for key in ["n_attack", "soft_prompt_tokens", "soft_prompt_steps"]:  # embedding attacks (issue 4)
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    if len(p.repe_depth) != 2 or not 0.0 <= p.repe_depth[0] <= p.repe_depth[1] <= 1.0:
        raise ParamsError(f"{source}: key 'repe_depth' expects [from, to] with 0 <= from <= to <= 1, got {p.repe_depth!r}")
    if not p.repe_coeffs:
        raise ParamsError(f"{source}: key 'repe_coeffs' expects at least one coefficient")
    if p.soft_prompt_step_size <= 0:
        raise ParamsError(f"{source}: key 'soft_prompt_step_size' expects a positive float, got {p.soft_prompt_step_size!r}")
    for key in ["scav_p0", "scav_p1"]:
        if not 0.0 < getattr(p, key) < 1.0:
            raise ParamsError(f"{source}: key {key!r} expects a probability in (0, 1), got {getattr(p, key)!r}")
    for key in ["n_prompt_attack", "gcg_steps", "gcg_topk", "gcg_search_width", "gcg_suffix_tokens",  # prompt attacks (issue 5)
                "gcg_batch_size", "gcg_check_every", "autodan_population", "autodan_steps", "autodan_crossover_every",
                "autodan_check_every", "attack_check_tokens"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["autodan_elite_frac", "autodan_crossover", "autodan_mutation"]:
        if not 0.0 <= getattr(p, key) <= 1.0:
            raise ParamsError(f"{source}: key {key!r} expects a probability in [0, 1], got {getattr(p, key)!r}")
    if p.gcg_screen_margin <= 0:
        raise ParamsError(f"{source}: key 'gcg_screen_margin' expects a positive float, got {p.gcg_screen_margin!r}")
    if p.autodan_population < 2:
        raise ParamsError(f"{source}: key 'autodan_population' expects at least 2, got {p.autodan_population!r}")
    for key in ["subspace_sft_steps", "subspace_sft_batch_size", "subspace_sft_response_tokens",  # safety subspaces (issue 8)
                "subspace_sft_prompt_tokens", "subspace_n_eval_dsr", "subspace_max_new_tokens",
                "subspace_mmlu_per_category", "subspace_n_activation", "subspace_benign_ft_steps"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    if p.subspace_sft_lr <= 0:
        raise ParamsError(f"{source}: key 'subspace_sft_lr' expects a positive float, got {p.subspace_sft_lr!r}")
    for key in ["subspace_energy_fractions", "subspace_projection_fractions", "subspace_eval_fractions"]:
        if (key != "subspace_eval_fractions" and not getattr(p, key)) or not all(0 < f <= 1 for f in getattr(p, key)):
            raise ParamsError(f"{source}: key {key!r} expects fractions in (0, 1], got {getattr(p, key)!r}")
    if not set(p.subspace_eval_fractions) <= set(p.subspace_projection_fractions):
        raise ParamsError(f"{source}: key 'subspace_eval_fractions' must be a subset of 'subspace_projection_fractions', "
                          f"got {p.subspace_eval_fractions!r} and {p.subspace_projection_fractions!r}")
    if len(p.subspace_activation_depth) != 2 or not 0.0 <= p.subspace_activation_depth[0] <= p.subspace_activation_depth[1] <= 1.0:
        raise ParamsError(f"{source}: key 'subspace_activation_depth' expects [from, to] with 0 <= from <= to <= 1, "
                          f"got {p.subspace_activation_depth!r}")
    for key in ["srr_k", "srr_max_new_tokens", "srr_hidden", "srr_heads", "srr_steps"]:  # SRR (issue 9)
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["srr_n_per_source", "srr_train_per_source", "srr_n_xstest", "srr_max_prompt_tokens"]:
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative int, got {getattr(p, key)!r}")
    for key in ["srr_temperature", "srr_tau", "srr_lr"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive number, got {getattr(p, key)!r}")
    if p.srr_k < 2 or p.srr_hidden % p.srr_heads or p.srr_layer < -1 or not p.srr_sources:
        raise ParamsError(f"{source}: SRR needs srr_k >= 2 (got {p.srr_k}), srr_heads dividing srr_hidden (got "
                          f"{p.srr_heads}, {p.srr_hidden}), srr_layer >= -1 (got {p.srr_layer}) and some srr_sources")
    if not all(0.0 < d <= 1.0 for d in p.srr_ablation_depths):
        raise ParamsError(f"{source}: key 'srr_ablation_depths' expects fractions in (0, 1], got {p.srr_ablation_depths!r}")
    if not 0.0 < p.confidence < 1.0:
        raise ParamsError(f"{source}: key 'confidence' expects a float in (0, 1), got {p.confidence!r}")


def load(path: str | Path, **overrides: Any) -> Params:
    """Load a YAML params file and apply keyword overrides on top."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of key: value, got {type(values).__name__}")
    return from_mapping({**values, **overrides}, source=str(path))


def from_namespace(namespace: Mapping[str, Any], source: str = "notebook parameters") -> Params:
    """Params from a notebook's globals: the schema's keys that the namespace defines.

    A notebook's `parameters` cell declares the keys it uses; papermill injects those of the params
    file after it. This picks them up and validates them like a file.
    """
    hints = Params.field_types()
    return from_mapping({k: namespace[k] for k in hints if k in namespace}, source=source)
