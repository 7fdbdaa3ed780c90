"""The GPU's own prefill and decode times for a Llama-3.1-8B shape, without framework overhead.

Hugging Face's eager decode (``gpu_calibrate.py``) is bound by the host: about 0.1 s a step
whatever the batch, far from what the GPU does. This script writes the same transformer in a
few lines of torch (bf16 random weights: token embedding skipped, RMSNorm, fused QKV, SDPA
attention over a preallocated KV cache, SwiGLU MLP, the LM head; RoPE left out, an elementwise
op of negligible cost) and times each step **replayed from a CUDA graph**, as vLLM runs its
decode steps, so the numbers are the GPU's: weights and KV cache read from HBM, tensor-core
matmuls, attention kernels.

* decode: one token for each of ``batch`` sequences at ``context`` tokens (the new token's K
  and V written into the cache, attention over ``context + 1``);
* prefill: ``k`` prompts of ``n`` tokens in one pass (causal attention within each prompt).

Writes ``OUT/points.json`` (the ``points`` of a kubeplex latency profile) after each
section. Usage: python gpu_graph_calibrate.py --out DIR [--shape llama-3.1-8b|tiny]
[--device cuda] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: (layers, hidden, heads, kv heads, intermediate, vocab) of Llama-3.1-8B and a CPU stand-in.
SHAPES = {"llama-3.1-8b": (32, 4096, 32, 8, 14336, 128256), "tiny": (2, 128, 2, 2, 256, 1024)}
DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 2048, 8192, 32768)
MAX_DECODE_TOKENS = 262144
PREFILL_PROMPTS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_BATCHES = (1, 4, 16, 64)
MAX_PREFILL_TOKENS = 32768
#: Graph replays timed per point (decode steps are short; prefills long).
DECODE_REPLAYS = 10
PREFILL_REPLAYS = 3
EPS = 1e-5


@dataclass
class Weights:
    norms: list[torch.Tensor]
    qkv: list[torch.Tensor]
    out: list[torch.Tensor]
    gate_up: list[torch.Tensor]
    down: list[torch.Tensor]
    final_norm: torch.Tensor
    head: torch.Tensor


def make_weights(shape: tuple[int, ...], device: str, dtype: torch.dtype) -> Weights:
    layers, hidden, heads, kv_heads, inter, vocab = shape
    head_dim = hidden // heads

    def w(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device, dtype=dtype) * 0.02

    return Weights(
        norms=[torch.ones(2, hidden, device=device, dtype=dtype) for _ in range(layers)],
        qkv=[w(hidden, (heads + 2 * kv_heads) * head_dim) for _ in range(layers)],
        out=[w(hidden, hidden) for _ in range(layers)],
        gate_up=[w(hidden, 2 * inter) for _ in range(layers)],
        down=[w(inter, hidden) for _ in range(layers)],
        final_norm=torch.ones(hidden, device=device, dtype=dtype), head=w(hidden, vocab))


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS).to(x.dtype) * weight


def mlp(h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    g, u = (h @ gate_up).chunk(2, dim=-1)
    return (F.silu(g) * u) @ down


def decode_step(x: torch.Tensor, wts: Weights, caches: list[tuple[torch.Tensor, torch.Tensor]],
                pos: int, shape: tuple[int, ...]) -> torch.Tensor:
    """x: (B, hidden), one new token per sequence at position ``pos``; returns logits."""
    _, hidden, heads, kv_heads, _, _ = shape
    d = hidden // heads
    b = x.shape[0]
    for i, (k_cache, v_cache) in enumerate(caches):
        h = rms(x, wts.norms[i][0])
        q, k, v = (h @ wts.qkv[i]).split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
        k_cache[:, :, pos] = k.view(b, kv_heads, d)
        v_cache[:, :, pos] = v.view(b, kv_heads, d)
        # The query heads of one KV head read its cache once (grouped-query attention).
        grouped = q.view(b, kv_heads, heads // kv_heads, d)
        att = F.scaled_dot_product_attention(grouped, k_cache[:, :, :pos + 1],
                                             v_cache[:, :, :pos + 1])
        x = x + att.reshape(b, hidden) @ wts.out[i]
        x = x + mlp(rms(x, wts.norms[i][1]), wts.gate_up[i], wts.down[i])
    return rms(x, wts.final_norm) @ wts.head


def prefill_pass(x: torch.Tensor, wts: Weights, shape: tuple[int, ...]) -> torch.Tensor:
    """x: (k, n, hidden); causal attention within each prompt; logits of the last tokens."""
    layers, hidden, heads, kv_heads, _, _ = shape
    d = hidden // heads
    k_, n = x.shape[0], x.shape[1]
    for i in range(layers):
        h = rms(x, wts.norms[i][0])
        q, k, v = (h @ wts.qkv[i]).split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
        q = q.view(k_, n, heads, d).transpose(1, 2)
        k = k.view(k_, n, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        v = v.view(k_, n, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + att.transpose(1, 2).reshape(k_, n, hidden) @ wts.out[i]
        x = x + mlp(rms(x, wts.norms[i][1]), wts.gate_up[i], wts.down[i])
    return rms(x[:, -1], wts.final_norm) @ wts.head


def timed_replays(fn: Any, device: str, replays: int) -> float:
    """Median seconds of one call: a CUDA graph replay on GPU, the eager call on CPU."""
    if not device.startswith("cuda"):
        fn()
        times = []
        for _ in range(replays):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del graph
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=240.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    shape = SHAPES[args.shape]
    layers, hidden, heads, kv_heads, _, _ = shape
    d = hidden // heads
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    wts = make_weights(shape, args.device, dtype)
    report: dict[str, Any] = {
        "shape": args.shape, "engine": f"hand-written Llama step in torch {torch.__version__}, "
        "bf16, CUDA graph replays (no framework)", "points": {"prefill": [], "decode": []},
        "skipped": []}
    if args.device.startswith("cuda"):
        report["device"] = torch.cuda.get_device_properties(0).name
    path = args.out / "points.json"
    with torch.inference_mode():
        for b in DECODE_BATCHES:
            for ctx in DECODE_CONTEXTS:
                if b * ctx > MAX_DECODE_TOKENS:
                    continue
                if time.monotonic() - start > 0.55 * args.budget_s:
                    report["skipped"].append(f"decode b={b} ctx={ctx}")
                    continue
                caches = [(torch.zeros(b, kv_heads, ctx + 1, d, device=args.device, dtype=dtype),
                           torch.zeros(b, kv_heads, ctx + 1, d, device=args.device, dtype=dtype))
                          for _ in range(layers)]
                x = torch.randn(b, hidden, device=args.device, dtype=dtype)
                seconds = timed_replays(
                    lambda x=x, caches=caches, ctx=ctx: decode_step(x, wts, caches, ctx, shape),
                    args.device, DECODE_REPLAYS)
                del caches
                report["points"]["decode"].append([b, ctx + 1, seconds])
                print(f"decode b={b} ctx={ctx}: {seconds * 1e3:.2f} ms", flush=True)
            path.write_text(json.dumps(report, indent=1) + "\n")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        for n in PREFILL_PROMPTS:
            for k in PREFILL_BATCHES:
                if k > 1 and k * n > MAX_PREFILL_TOKENS:
                    continue
                if time.monotonic() - start > 0.9 * args.budget_s:
                    report["skipped"].append(f"prefill n={n} k={k}")
                    continue
                x = torch.randn(k, n, hidden, device=args.device, dtype=dtype)
                seconds = timed_replays(lambda x=x: prefill_pass(x, wts, shape), args.device,
                                       PREFILL_REPLAYS)
                report["points"]["prefill"].append([n, k, seconds])
                print(f"prefill n={n} k={k}: {seconds * 1e3:.2f} ms", flush=True)
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            path.write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"] = time.monotonic() - start
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"done in {report['seconds']:.0f} s; skipped {len(report['skipped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
