"""The one vocabulary for reading and editing the residual stream (TransformerLens's `run_with_cache` and
`run_with_hooks`, on any Hugging Face decoder, inside peft wrappers too).

Layer convention (docs/architecture.md, "Representations"): layer `l` in `0..L` (L = `config.num_hidden_layers`);
0 is the embedding output (the input of decoder block 1), `l` is the raw output of decoder block `l`, *before* the
final norm. HF's `output_hidden_states=True` returns the last entry *after* the final norm, so our layer L is not
`hidden_states[L]`. Reads stop the forward after the deepest requested layer (later blocks, the final norm and
the lm_head never run); edits apply in every forward inside their block, so also at every generation step.
Hooks are always removed, also when the forward fails.
"""

from __future__ import annotations

import contextlib
import numbers
import weakref
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from . import models

Edit = Callable[[torch.Tensor], torch.Tensor]  # residual stream [batch, seq, hidden] -> edited, same shape


_EDITING: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()  # first block -> open edits


class _StopForward(Exception):
    """Raised from the hook of the deepest requested layer to end the forward pass there."""


def check_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """Return `layers` as a list of ints, or raise ValueError naming the valid range 0..L."""
    n_layers = models.num_layers(model)
    config = model.config
    path = getattr(config, "_name_or_path", "")
    name = f"{path} ({config.model_type})" if path else config.model_type
    layers = list(layers)
    if not layers:
        raise ValueError(f"no layers requested; choose layers in 0..{n_layers} for {name}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f"layer {layer!r} is not an int; choose layers in 0..{n_layers} for {name}")
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range 0..{n_layers} for {name}")
    return [int(layer) for layer in layers]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens (as `generate` does), so a left-padded row matches its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _residual(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # older decoder blocks return (hidden, ...)


@contextlib.contextmanager
def _capturing(model: nn.Module, layers: list[int], capture: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call `capture(layer, residual [batch, seq, hidden])` for each layer during the forwards inside the block."""
    blocks = models.decoder_layers(model)
    handles = []
    try:
        if 0 in layers:
            handles.append(blocks[0].register_forward_pre_hook(
                lambda module, args, kwargs: capture(0, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
        for layer in sorted(set(layers) - {0}):
            handles.append(blocks[layer - 1].register_forward_hook(
                lambda module, args, output, layer=layer: capture(layer, _residual(output))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _model_inputs(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward's arguments; a `past_key_values` (e.g. `batching.head_inputs`' copy of a shared head) and its
    `position_ids` pass through."""
    mask = inputs["attention_mask"]
    given = {key: inputs[key] for key in ("input_ids", "inputs_embeds", "past_key_values") if key in inputs}
    return {**given, "attention_mask": mask, "position_ids": inputs.get("position_ids", position_ids(mask)),
            "use_cache": False}


def run_with_cache(model: nn.Module, inputs: Mapping[str, torch.Tensor], layers: list[int], position: int | None = -1,
                   stop_at_layer: bool = True) -> torch.Tensor:
    """Residual stream at `layers` in one forward: [batch, len(layers), hidden] at `position` (default the last,
    which is every row's last real token under left padding), or [batch, len(layers), seq, hidden] for
    position None. Differentiable. `inputs` holds `attention_mask` and `input_ids` or `inputs_embeds`."""
    layers = check_layers(model, layers)
    if position == -1 and not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("run_with_cache at the last position needs left padding (tokenizer.padding_side = "
                         "'left'): some rows do not end in a real token")
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int, hidden: torch.Tensor) -> None:
        captured[layer] = hidden if position is None else hidden[:, position]
        if stop_at_layer and layer == deepest:
            raise _StopForward

    try:
        with _capturing(model, layers, capture):
            model(**_model_inputs(inputs))
        if stop_at_layer:
            raise RuntimeError(f"the forward pass of {type(model).__name__} never reached decoder block {deepest}")
    except _StopForward:
        pass
    return torch.stack([captured[layer] for layer in layers], dim=1)


def run_with_cache_and_logprobs(model: nn.Module, inputs: Mapping[str, torch.Tensor],
                                layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole forward: states [batch, len(layers), hidden] at the last position and the next-token log-probs
    [batch, vocab] there (float32; the lm_head runs on that position only)."""
    layers = check_layers(model, layers)
    decoder, head = models.decoder_and_head(model)
    last = models.num_layers(model)
    captured: dict[int, torch.Tensor] = {}  # layer -> [batch, seq, hidden], or [batch, hidden] for layer L

    # Layer L is sliced inside its hook, earlier layers after the forward: the order in which autograd sums the
    # gradients into a block's output follows the order its slices were made, so this keeps training updates (not
    # only values) bit-identical to a forward that reads HF's hidden_states.
    def capture(layer: int, hidden: torch.Tensor) -> None:
        captured[layer] = hidden[:, -1] if layer == last else hidden

    with _capturing(model, layers, capture):
        hidden = decoder(**_model_inputs(inputs)).last_hidden_state  # [batch, seq, hidden], after the final norm
    states = torch.stack([captured[layer] if layer == last else captured[layer][:, -1] for layer in layers], dim=1)
    return states, head(hidden[:, -1]).float().log_softmax(-1)


@contextlib.contextmanager
def edit_residual(model: nn.Module, edits: Mapping[int, Edit]) -> Iterator[None]:
    """Apply `edits[l]` to the residual stream at layer l in every forward pass inside the block (so also at every
    step of `generation.generate`); the hooks are removed on exit, also after an error."""
    layers = check_layers(model, list(edits)) if edits else []
    blocks = models.decoder_layers(model)
    handles = []

    def input_hook(module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (edits[0](args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edits[0](kwargs["hidden_states"])}

    def output_hook(edit: Edit):
        def hook(module: nn.Module, args: tuple, output):
            return (edit(output[0]), *output[1:]) if isinstance(output, tuple) else edit(output)
        return hook

    first, opened = blocks[0], 1 if layers else 0  # an edit of no layer edits nothing
    _EDITING[first] = _EDITING.get(first, 0) + opened
    try:
        for layer in sorted(set(layers)):
            if layer == 0:
                handles.append(blocks[0].register_forward_pre_hook(input_hook, with_kwargs=True))
            else:
                handles.append(blocks[layer - 1].register_forward_hook(output_hook(edits[layer])))
        yield
    finally:
        for handle in handles:
            handle.remove()
        _EDITING[first] -= opened


def editing(model: nn.Module) -> bool:
    """Whether an `edit_residual` block is open on `model` (or on a wrapper of the same decoder): then every
    forward is edited, and states computed outside the edit (e.g. a cached shared prompt head) would not match."""
    return _EDITING.get(models.decoder_layers(model)[0], 0) > 0
