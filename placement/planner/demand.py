"""What the LLM planner takes and gives: demands and pools in, a placement with its honest
prediction out.

* :class:`ModelDemand`: one model's shape, load (rate, burstiness, request lengths), SLO and
  replica bounds; :class:`PoolSpec`: GPUs of one kind on nodes.
* :class:`Placement`: groups (:class:`GroupPlacement` hosting :class:`HostedModel`), and per
  model a :class:`ModelOutcome` whose attainment is *predicted on samples held out from the
  search* (median and range), never on the sample the search optimised on.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.hardware import GPUSpec
from kubeplex.placement.llm import DEFAULT_MEMORY_FRACTION, RESERVE_BYTES, LLMProfile, ModelShape
from kubeplex.placement.planner.simulator import ModelSLO
from kubeplex.placement.planner.workload import DEFAULT_LENGTH_CV, LengthModel

__all__ = [
    "MEMORY_LIMIT",
    "MIN_CONCURRENT_SEQUENCES",
    "GroupPlacement",
    "HostedModel",
    "ModelDemand",
    "ModelOutcome",
    "Placement",
    "PoolSpec",
    "Prediction",
]

#: The shares of one GPU's memory that a group's engines may claim together (vLLM's default
#: --gpu-memory-utilization, split among co-located engines).
MEMORY_LIMIT = DEFAULT_MEMORY_FRACTION
#: Least KV room a replica gets: this many concurrent requests of its mean length.
MIN_CONCURRENT_SEQUENCES = 8


@dataclass(frozen=True)
class ModelDemand:
    """One model the pool must serve: its shape, its load and its SLO."""

    name: str
    model: ModelShape
    arrival_rate: float
    cv: float = 1.0
    prompt_tokens: int = 512
    output_tokens: int = 128
    ttft_slo_s: float = 1.0
    tpot_slo_s: float | None = None
    target_attainment: float = 0.99
    min_replicas: int = 0
    max_replicas: int | None = None
    tp: int | None = None  # None: the planner chooses
    pp: int | None = None
    max_model_len: int | None = None  # KV for one such sequence must fit (vLLM refuses less)
    #: Models with different keys never share a group (e.g. the Kubernetes namespace: a pod
    #: joins the Services of its own namespace only). Equal keys (the default) may share.
    colocation_key: str = ""
    #: Spread of prompt and output lengths around their means (lognormal; 0: every request
    #: exactly the mean).
    prompt_cv: float = DEFAULT_LENGTH_CV
    output_cv: float = DEFAULT_LENGTH_CV
    #: Observed (prompt, output) token pairs; when given, requests are drawn from them.
    observed_lengths: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.arrival_rate < 0:
            raise PlacementError(f"model {self.name!r}: arrival rate must be >= 0 req/s, "
                                 f"got {self.arrival_rate}")
        if self.cv <= 0:
            raise PlacementError(f"model {self.name!r}: burstiness (cv) must be > 0")
        if not 0 < self.target_attainment <= 1:
            raise PlacementError(f"model {self.name!r}: target attainment must be in (0, 1]")
        if self.min_replicas < 0 or (self.max_replicas is not None
                                     and self.max_replicas < self.min_replicas):
            raise PlacementError(f"model {self.name!r}: need 0 <= min_replicas <= max_replicas")
        try:
            _ = (self.slo, self.lengths)  # building them validates SLOs and lengths
        except PlacementError as exc:
            raise PlacementError(f"model {self.name!r}: {exc}") from exc

    @property
    def slo(self) -> ModelSLO:
        return ModelSLO(self.ttft_slo_s, self.tpot_slo_s)

    @property
    def lengths(self) -> LengthModel:
        return LengthModel(self.prompt_tokens, self.output_tokens, self.prompt_cv,
                           self.output_cv, self.observed_lengths, self.max_model_len)

    @property
    def needed(self) -> bool:
        return self.arrival_rate > 0 or self.min_replicas > 0

    def allows(self, tp: int, pp: int) -> bool:
        return (self.tp is None or self.tp == tp) and (self.pp is None or self.pp == pp)

    def min_share(self, gpu: GPUSpec, tp: int, pp: int) -> float | None:
        """Least memory share of each GPU this model needs in a ``tp x pp`` group (None:
        that shape is invalid for the model or it cannot fit even alone)."""
        if not self.allows(tp, pp):
            return None
        try:
            prof = LLMProfile(self.model, gpu, tp, pp)
        except PlacementError:
            return None
        kv_tokens = max(MIN_CONCURRENT_SEQUENCES * (self.prompt_tokens + self.output_tokens),
                        self.max_model_len or 0)
        kv_bytes = kv_tokens * prof.kv_bytes_per_token_per_gpu
        share = (prof.weight_bytes_per_gpu + RESERVE_BYTES + kv_bytes) / gpu.memory_bytes
        return share if share <= MEMORY_LIMIT else None


@dataclass(frozen=True)
class PoolSpec:
    """``nodes`` x ``gpus_per_node`` GPUs of one kind, at most ``max_gpus`` of them used."""

    gpu: GPUSpec
    nodes: int
    gpus_per_node: int
    max_gpus: int | None = None
    name: str = "pool"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise PlacementError(f"pool {self.name!r}: needs >= 1 node and >= 1 GPU per node")
        if self.max_gpus is not None and self.max_gpus < 0:
            raise PlacementError(f"pool {self.name!r}: max GPUs must be >= 0")
        if self.usable_gpus == 0:
            raise PlacementError(f"pool {self.name!r} has zero usable GPUs")

    @property
    def usable_gpus(self) -> int:
        total = self.nodes * self.gpus_per_node
        return total if self.max_gpus is None else min(total, self.max_gpus)

    def node_capacity(self) -> list[int]:
        """GPUs usable on each node (nodes filled in order up to ``max_gpus``)."""
        left, caps = self.usable_gpus, []
        for _ in range(self.nodes):
            caps.append(min(left, self.gpus_per_node))
            left -= caps[-1]
        return caps


@dataclass(frozen=True)
class HostedModel:
    name: str
    memory_share: float  # fraction of each GPU's memory (vLLM --gpu-memory-utilization)
    kv_capacity_tokens: int


@dataclass(frozen=True)
class GroupPlacement:
    """One group: a pod requesting ``tp * pp`` GPUs on one node, hosting one engine per model."""

    id: str
    node: int
    gpu_indices: tuple[int, ...]
    tp: int
    pp: int
    models: tuple[HostedModel, ...]

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def memory_used(self) -> float:
        return sum(m.memory_share for m in self.models)


@dataclass(frozen=True)
class Prediction:
    """Attainment on samples held out from the search: the ``median`` of ``samples`` fresh
    samples of ``requests`` requests each, and the ``low``-``high`` range they span (with 5
    samples the range covers the true median with probability 1 - 2 / 2^5 = 94%)."""

    median: float
    low: float
    high: float
    samples: int
    requests: int

    def __str__(self) -> str:
        return (f"{self.median:.1%} (range {self.low:.1%}-{self.high:.1%} over {self.samples} "
                f"held-out samples)")


@dataclass(frozen=True)
class ModelOutcome:
    """Predicted service of one model under the placement: ``attainment`` is the median over
    the held-out samples, ``low``/``high`` their range; ``trained`` what the search saw on the
    sample it optimised on (for comparison only)."""

    name: str
    replicas: int
    attainment: float
    target: float
    p95_ttft_s: float
    low: float = 0.0
    high: float = 0.0
    trained: float = 0.0

    @property
    def met(self) -> bool:
        return self.attainment >= self.target


@dataclass(frozen=True)
class Placement:
    """``attainment`` is ``prediction.median``: requests of all models within their SLO on
    samples the search never saw."""

    pool: str
    groups: tuple[GroupPlacement, ...]
    models: tuple[ModelOutcome, ...]
    attainment: float
    explanation: str
    #: Incremental plans: groups created or changed (ids), and groups removed.
    moved: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    free_gpus: int = 0
    prediction: Prediction | None = None
    #: Needed models left without a replica (only when the caller allowed it).
    unplaced: tuple[str, ...] = ()

    def replicas(self, name: str) -> int:
        return sum(1 for g in self.groups for m in g.models if m.name == name)

    def outcome(self, name: str) -> ModelOutcome:
        for o in self.models:
            if o.name == name:
                return o
        raise PlacementError(f"model {name!r} is not in this placement")
