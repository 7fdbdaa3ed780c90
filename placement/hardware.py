"""GPU specifications the latency model and the planner reason about.

Numbers are vendor datasheet figures for dense (non-sparse) BF16 math, HBM bandwidth and
the GPU-to-GPU interconnect bandwidth *per direction*. Real kernels reach a fraction of them;
the efficiency factors live in :mod:`kubeplex.placement.llm`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kubeplex.placement.errors import UnknownProfileError

__all__ = ["GIB", "GPUS", "GPUSpec", "gpu"]

GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator model.

    ``interconnect`` names the link between GPUs of one node ("nvlink", "pcie", "none");
    ``interconnect_gbps`` is its bandwidth per direction in GB/s (10^9 bytes/s).
    """

    name: str
    memory_gib: float
    bf16_tflops: float
    hbm_gbps: float
    interconnect: str
    interconnect_gbps: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


GPUS: Mapping[str, GPUSpec] = MappingProxyType({
    # NVIDIA H100 SXM5 datasheet: 80 GB HBM3, 3.35 TB/s, BF16 dense 989 TFLOPS,
    # NVLink 4 at 900 GB/s total (450 GB/s per direction).
    "H100-80GB": GPUSpec("H100-80GB", 80, 989.0, 3350.0, "nvlink", 450.0),
    # NVIDIA H200 SXM datasheet: 141 GB HBM3e, 4.8 TB/s, BF16 dense 989 TFLOPS, NVLink 4 at
    # 900 GB/s total; memory as torch reports it on the H200 kubeplex was calibrated on
    # (150,109,880,320 bytes = 139.8 GiB).
    "H200-141GB": GPUSpec("H200-141GB", 139.8, 989.0, 4800.0, "nvlink", 450.0),
    # NVIDIA A100 SXM4 80GB datasheet: HBM2e 2,039 GB/s, BF16 dense 312 TFLOPS,
    # NVLink 3 at 600 GB/s total (300 GB/s per direction).
    "A100-80GB": GPUSpec("A100-80GB", 80, 312.0, 2039.0, "nvlink", 300.0),
    # NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, BF16 dense 121 TFLOPS (242 with sparsity),
    # no NVLink: PCIe Gen4 x16, 64 GB/s bidirectional (32 GB/s per direction).
    "L4": GPUSpec("L4", 24, 121.0, 300.0, "pcie", 32.0),
    # A local CPU "slot" for local mode and tests: a modest server core complex
    # (about 1 TFLOPS of BF16 through AMX/AVX-512, ~50 GB/s of DRAM bandwidth, 16 GiB
    # set aside). Not a datasheet part; an order-of-magnitude stand-in.
    "cpu": GPUSpec("cpu", 16, 1.0, 50.0, "none", 10.0),
})


def gpu(name: str) -> GPUSpec:
    """Look a GPU up by name (case-insensitive); the error lists the known names."""
    for key, spec in GPUS.items():
        if key.lower() == name.lower():
            return spec
    raise UnknownProfileError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
