"""Measure a Llama-3.1-8B-shaped model on one GPU with Hugging Face transformers (no vLLM).

Runs where only torch, transformers and safetensors exist (the lent GPU machine): it builds a
``LlamaForCausalLM`` from a config with random bf16 weights (nothing is downloaded) and
measures, writing everything to ``OUT/points.json`` after each section (a timeout keeps what
was measured):

* prefill time of ``k`` prompts of ``n`` tokens in one forward pass (``logits_to_keep=1``,
  the KV cache written), medians of repeats after a warm-up, for a grid of ``n`` and ``k``;
* decode step time with ``batch`` sequences at ``context`` tokens (a cache prefilled to that
  context, then single-token steps; the median step);
* KV bytes per token (GPU memory the cache of one long prompt takes);
* sleep-mode physics: every weight GPU -> pinned CPU (what vLLM's sleep level 1 offloads) and
  back (its wake_up), and a cold load of a safetensors file from local disk to the GPU with
  the file evicted from the page cache first.

The points file has the ``points`` object of a kubeplex latency profile, so
``kubeplex calibrate --refit OUT/points.json ...`` fits it. Decode steps run eagerly (no CUDA
graphs, a DynamicCache that grows by concatenation): slower than vLLM's, and said so.

Usage: python gpu_calibrate.py --out DIR [--shape llama-3.1-8b|tiny] [--device cuda]
       [--budget-s 360] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: Llama-3.1-8B's config.json (the shape kubeplex's catalogue calls llama-3.1-8b).
LLAMA_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False}
#: A tiny stand-in to try the script on a CPU.
TINY = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "tie_word_embeddings": False}
#: Prompt lengths and batch sizes measured: every batch of at most MAX_PREFILL_TOKENS tokens,
#: and every prompt length once alone.
PREFILL_PROMPTS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PREFILL_BATCHES = (1, 4, 16, 64)
MAX_PREFILL_TOKENS = 32768
DECODE_BATCHES = (1, 4, 16, 64, 128, 256)
DECODE_CONTEXTS = (512, 1024, 4096, 16384)
MAX_DECODE_TOKENS = 262144
DECODE_STEPS = 6
REPEATS = 3
KV_PROBE_TOKENS = 8192


class Clock:
    def __init__(self, device: str, budget_s: float) -> None:
        self.device, self.start, self.budget = device, time.monotonic(), budget_s

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def build(shape: dict[str, Any], device: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def save(out: Path, report: dict[str, Any]) -> None:
    (out / "points.json").write_text(json.dumps(report, indent=1) + "\n")


def prefill(model: Any, clock: Clock, report: dict[str, Any], out: Path, vocab: int,
            max_len: int) -> None:
    rows = report["points"]["prefill"]
    for n in PREFILL_PROMPTS:
        if n > max_len:
            continue
        for k in PREFILL_BATCHES:
            if k > 1 and k * n > MAX_PREFILL_TOKENS:
                continue
            if clock.left() < 0.55 * clock.budget:
                report["skipped"].append(f"prefill n={n} k={k} (time budget)")
                continue
            ids = torch.randint(0, vocab, (k, n), device=clock.device)

            def run(ids: torch.Tensor = ids) -> Any:
                with torch.inference_mode():
                    return model(input_ids=ids, use_cache=True, logits_to_keep=1)

            clock.timed(run)  # warm-up: kernels, allocator
            times = [clock.timed(run)[0] for _ in range(REPEATS)]
            rows.append([n, k, statistics.median(times)])
            print(f"prefill n={n} k={k}: {rows[-1][2] * 1e3:.1f} ms", flush=True)
        save(out, report)


def decode(model: Any, clock: Clock, report: dict[str, Any], out: Path, vocab: int,
           max_len: int) -> None:
    rows = report["points"]["decode"]
    for b in DECODE_BATCHES:
        for ctx in DECODE_CONTEXTS:
            if b * ctx > MAX_DECODE_TOKENS or ctx + DECODE_STEPS > max_len:
                continue
            if clock.left() < 0.3 * clock.budget:
                report["skipped"].append(f"decode b={b} ctx={ctx} (time budget)")
                continue
            with torch.inference_mode():
                ids = torch.randint(0, vocab, (b, ctx), device=clock.device)
                cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
                step_ids = torch.randint(0, vocab, (b, 1), device=clock.device)
                times = []
                for _ in range(DECODE_STEPS):
                    seconds, result = clock.timed(functools.partial(
                        model, input_ids=step_ids, past_key_values=cache, use_cache=True,
                        logits_to_keep=1))
                    cache = result.past_key_values
                    times.append(seconds)
            cache = None
            rows.append([b, ctx + DECODE_STEPS // 2, statistics.median(times[1:])])
            print(f"decode b={b} ctx={ctx}: {rows[-1][2] * 1e3:.2f} ms", flush=True)
        save(out, report)


def kv_bytes(model: Any, clock: Clock, vocab: int, max_len: int) -> float | None:
    if not clock.device.startswith("cuda"):
        return None
    n = min(KV_PROBE_TOKENS, max_len)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        ids = torch.randint(0, vocab, (1, n), device=clock.device)
        result = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        clock.sync()
        after = torch.cuda.memory_allocated()
    del result
    return (after - before) / n


def sleep_physics(model: Any, clock: Clock) -> dict[str, Any]:
    """Weights GPU -> pinned CPU (vLLM sleep level 1) and back (wake_up)."""
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    alloc_s, pinned = clock.timed(lambda: [torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
                                           for p in params])

    def offload() -> None:
        for p, c in zip(params, pinned, strict=True):
            c.copy_(p.data, non_blocking=True)

    def wake() -> None:
        for p, c in zip(params, pinned, strict=True):
            p.data.copy_(c, non_blocking=True)

    offload_s, _ = clock.timed(offload)
    wake_s, _ = clock.timed(wake)
    offload2_s, _ = clock.timed(offload)
    wake2_s, _ = clock.timed(wake)
    pinned.clear()
    return {"weight_bytes": nbytes, "pin_alloc_s": alloc_s,
            "offload_s": min(offload_s, offload2_s), "wake_s": min(wake_s, wake2_s),
            "offload_gbps": nbytes / min(offload_s, offload2_s) / 1e9,
            "wake_gbps": nbytes / min(wake_s, wake2_s) / 1e9}


def _evict(path: Path) -> str:
    """Drop ``path`` from the page cache (fsync + fadvise; drop_caches when permitted)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "fadvise DONTNEED + drop_caches"
    except OSError:
        return "fadvise DONTNEED (drop_caches refused)"


def cold_load(model: Any, clock: Clock, scratch: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    free = os.statvfs(scratch).f_bavail * os.statvfs(scratch).f_frsize
    if free < 1.2 * nbytes:
        return {"skipped": f"{free / 1e9:.1f} GB free in {scratch}, need {nbytes / 1e9:.1f}"}
    path = scratch / "weights.safetensors"
    try:
        save_s, _ = clock.timed(functools.partial(save_file, state, str(path)))
        state.clear()
        evicted = _evict(path)
        device = clock.device if clock.device.startswith("cuda") else "cpu"
        load_s, loaded = clock.timed(lambda: load_file(str(path), device=device))
        del loaded
        evicted_again = _evict(path)
        return {"weight_bytes": nbytes, "save_s": save_s, "load_s": load_s,
                "load_gbps": nbytes / load_s / 1e9, "page_cache": evicted,
                "page_cache_second": evicted_again}
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=("llama-3.1-8b", "tiny"), default="llama-3.1-8b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=360.0)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.device, args.budget_s)
    shape = LLAMA_8B if args.shape == "llama-3.1-8b" else TINY
    import transformers

    report: dict[str, Any] = {
        "shape": args.shape, "engine": f"transformers {transformers.__version__} eager "
        f"(sdpa attention, DynamicCache), torch {torch.__version__}",
        "host": platform.node(), "python": sys.version.split()[0],
        "points": {"prefill": [], "decode": []}, "skipped": [], "seconds": {}}
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        report["device"] = {"name": props.name, "total_memory_bytes": props.total_memory,
                            "multiprocessors": props.multi_processor_count,
                            "cuda": torch.version.cuda}
    build_s, model = clock.timed(lambda: build(shape, args.device))
    report["seconds"]["build"] = build_s
    print(f"built {args.shape} in {build_s:.1f} s", flush=True)
    vocab, max_len = shape["vocab_size"], shape["max_position_embeddings"]
    report["kv_bytes_per_token"] = kv_bytes(model, clock, vocab, max_len)
    save(args.out, report)
    t0 = time.monotonic()
    prefill(model, clock, report, args.out, vocab, max_len)
    report["seconds"]["prefill"] = time.monotonic() - t0
    t0 = time.monotonic()
    decode(model, clock, report, args.out, vocab, max_len)
    report["seconds"]["decode"] = time.monotonic() - t0
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        report["sleep"] = sleep_physics(model, clock)
        save(args.out, report)
    if clock.left() > 0.1 * clock.budget:
        report["cold_load"] = cold_load(model, clock, args.scratch)
    else:
        report["skipped"].append("cold load (time budget)")
    report["seconds"]["total"] = time.monotonic() - clock.start
    save(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "points"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
