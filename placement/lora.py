"""LoRA adapters on a base model: how vLLM sizes their slots, and the memory they take.

vLLM serving adapters (``--enable-lora``) preallocates, on every GPU of the group, weight
buffers for ``--max-loras`` adapters of rank ``--max-lora-rank`` on every linear layer it
supports (for Llama-style models: ``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``),
whatever adapters are loaded. That memory is not KV cache, so placement counts it like
weights (:func:`with_adapters`), the sim engine takes it out of its KV capacity, and the
runtime starts vLLM with the same two numbers (:func:`lora_slots`).

Per layer and adapter slot, with hidden size ``H``, KV width ``Hkv`` (kv heads x head dim),
intermediate size ``I`` and rank ``r``, the buffers hold A (``r x in``) and B (``out x r``)
for each of those projections: ``r x (3H + H + 2Hkv)`` for qkv (A per q, k, v slice),
``2rH`` for o, ``r x (2H + 2I)`` for gate_up and ``r x (I + H)`` for down:
``r x (9H + 2Hkv + 3I)`` elements in all, at the model's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.llm import ModelShape

__all__ = [
    "DEFAULT_ADAPTER_RANK",
    "VLLM_LORA_RANKS",
    "lora_bytes",
    "lora_params",
    "lora_slots",
    "with_adapters",
]

#: The ``--max-lora-rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``, 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: vLLM's default ``--max-lora-rank``; an adapter whose rank is not stated is taken as this.
DEFAULT_ADAPTER_RANK = 16


def lora_slots(ranks: Iterable[int]) -> tuple[int, int]:
    """``(max_loras, max_lora_rank)`` for adapters of these ranks: a slot for each (all can
    be in one batch) and the smallest rank vLLM accepts that holds the largest adapter."""
    ranks = list(ranks)
    if not ranks:
        raise PlacementError("lora_slots needs at least one adapter rank")
    largest = max(ranks)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= largest:
            return len(ranks), allowed
    raise PlacementError(f"LoRA rank {largest} is above vLLM's largest --max-lora-rank "
                         f"({VLLM_LORA_RANKS[-1]})")


def lora_params(shape: ModelShape, max_loras: int, max_rank: int) -> float:
    """Elements of the adapter buffers vLLM allocates for ``shape`` (whole model)."""
    kv_width = shape.kv_heads * shape.head_dim
    per_layer = max_rank * (9 * shape.hidden + 2 * kv_width + 3 * shape.intermediate)
    return float(per_layer * shape.layers * max_loras)


def lora_bytes(shape: ModelShape, max_loras: int, max_rank: int) -> float:
    """Bytes of those buffers at the model's dtype (whole model, before any split)."""
    return lora_params(shape, max_loras, max_rank) * shape.dtype_bytes


def with_adapters(shape: ModelShape, ranks: Iterable[int]) -> ModelShape:
    """``shape`` with the adapter slots counted as weights (the name is kept: it still names
    the profile). The planner splits weights evenly over the ``tp x pp`` GPUs; vLLM
    replicates half of each adapter's matrices across tensor-parallel ranks, so at tp > 1
    this slightly undercounts (by at most half the adapter memory)."""
    ranks = list(ranks)
    if not ranks:
        return shape
    max_loras, max_rank = lora_slots(ranks)
    return replace(shape, params=shape.params + lora_params(shape, max_loras, max_rank))
