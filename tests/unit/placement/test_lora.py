"""LoRA adapter slots: vLLM's rank rounding, their memory, and placement counting it."""

from __future__ import annotations

import pytest

from kubeplex.api import ModelService, from_dict
from kubeplex.placement.errors import PlacementError
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model
from kubeplex.placement.lora import (
    VLLM_LORA_RANKS,
    lora_bytes,
    lora_params,
    lora_slots,
    with_adapters,
)
from kubeplex.placement.specs import demand_from_service

#: PEFT's "trainable params" for a rank-16 LoRA on every linear layer of a Llama-3 8B
#: (q, k, v, o, gate, up, down): the adapter vLLM must hold in one slot.
LLAMA3_8B_R16_ALL_LINEAR = 41_943_040


@pytest.mark.parametrize(("ranks", "slots"), [
    ([8], (1, 8)), ([4], (1, 8)), ([16, 8, 2], (3, 16)), ([17], (1, 32)), ([300], (1, 320)),
    ([512, 1], (2, 512)),
])
def test_slots_round_the_largest_rank_up_to_one_vllm_accepts(
        ranks: list[int], slots: tuple[int, int]) -> None:
    assert lora_slots(ranks) == slots
    assert slots[1] in VLLM_LORA_RANKS


def test_a_rank_above_vllms_largest_or_no_adapter_is_refused() -> None:
    with pytest.raises(PlacementError, match="above vLLM's largest"):
        lora_slots([513])
    with pytest.raises(PlacementError, match="at least one"):
        lora_slots([])


def test_one_slot_holds_what_peft_counts_for_a_full_llama_adapter() -> None:
    assert lora_params(model("llama-3.1-8b"), 1, 16) == LLAMA3_8B_R16_ALL_LINEAR
    # Slots and rank scale it linearly; bytes follow the model's dtype (bf16).
    assert lora_params(model("llama-3.1-8b"), 3, 32) == 6 * LLAMA3_8B_R16_ALL_LINEAR
    assert lora_bytes(model("llama-3.1-8b"), 1, 16) == 2 * LLAMA3_8B_R16_ALL_LINEAR


def test_adapters_count_as_weights_and_leave_less_kv_cache() -> None:
    base = model("llama-3.1-8b")
    assert with_adapters(base, []) is base
    bigger = with_adapters(base, [16, 16, 8])
    assert bigger.name == base.name
    assert bigger.weight_bytes - base.weight_bytes == lora_bytes(base, 3, 16)


def _service(adapters: list[dict[str, object]]) -> ModelService:
    svc = from_dict({
        "apiVersion": "kubeplex.io/v1alpha1", "kind": "ModelService",
        "metadata": {"name": "llama", "namespace": "default"},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                           "profile": "llama-3.1-8b"},
                 "adapters": adapters, "pool": "h100", "slo": {"ttftSeconds": 0.5}}})
    assert isinstance(svc, ModelService)
    return svc


def test_placement_demand_needs_more_memory_with_adapters() -> None:
    plain = demand_from_service(_service([]))
    many = demand_from_service(_service(
        [{"name": f"a{i}", "uri": f"hf://org/a{i}", "rank": 64} for i in range(8)]))
    h100 = gpu("H100-80GB")
    low, high = plain.min_share(h100, 1, 1), many.min_share(h100, 1, 1)
    assert low is not None and high is not None
    # 8 slots of rank 64 on an 8B model: 8 x 4 x 41.9M params x 2 bytes = 2.7 GB more.
    extra = lora_bytes(model("llama-3.1-8b"), 8, 64)
    assert high - low == pytest.approx(extra / h100.memory_bytes)
