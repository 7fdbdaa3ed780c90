"""``sim``: a vLLM-compatible engine simulator (``python -m kubeplex.runtime.sim --help``).

It serves the same OpenAI endpoints and ``vllm:*`` metrics as a vLLM server, with latency from
:mod:`kubeplex.placement.llm` (a model x GPU x tp x pp profile) and continuous batching
simulated in real time (scaled by ``--time-scale``), so one machine can run many replicas
that behave like H100s serving an 8B or 70B model.
"""

from kubeplex.runtime.sim.engine import SimEngine
from kubeplex.runtime.sim.metrics import VllmMetrics
from kubeplex.runtime.sim.scheduler import Scheduler, SimRequest
from kubeplex.runtime.sim.server import SimServer, count_prompt_tokens

__all__ = ["Scheduler", "SimEngine", "SimRequest", "SimServer", "VllmMetrics",
           "count_prompt_tokens"]
