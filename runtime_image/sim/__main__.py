"""``python -m kubeplex.runtime.sim``: run one simulated vLLM server (see ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import replace

from aiohttp import web

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.llm import LLMProfile, profile
from kubeplex.placement.lora import DEFAULT_ADAPTER_RANK, VLLM_LORA_RANKS, with_adapters
from kubeplex.runtime._loop import run
from kubeplex.runtime.prefix import VLLM_BLOCK_SIZE
from kubeplex.runtime.sim import apis
from kubeplex.runtime.sim.device import SharedDevice
from kubeplex.runtime.sim.engine import SimEngine
from kubeplex.runtime.sim.lora import LoraRegistry, parse_modules
from kubeplex.runtime.sim.metrics import VllmMetrics
from kubeplex.runtime.sim.scheduler import vllm_batched_tokens
from kubeplex.runtime.sim.server import SimServer

__all__ = ["main", "parser"]

#: vLLM's generic default --max-num-seqs (V1 engine, OpenAI server).
DEFAULT_MAX_NUM_SEQS = 256
#: Practical host->device copy rate of PCIe Gen4 x16 (GB/s): how fast a level-1 wake brings
#: offloaded weights back. With the fixed cost it lands in vLLM's reported 0.1-6 s range.
HOST_TO_DEVICE_GBPS = 25.0
#: Local NVMe read rate (GB/s): a level-2 wake reloads the weights from disk.
DISK_GBPS = 2.0
#: Fixed part of a wake-up (allocator and CUDA graph re-creation), seconds.
WAKE_FIXED_SECONDS = 0.1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kubeplex.runtime.sim",
        description="A vLLM-compatible engine simulator: OpenAI endpoints and vllm:* metrics, "
                    "latency from kubeplex's placement model, continuous batching in real time.")
    p.add_argument("--model-profile", default="llama-3.1-8b",
                   help="model shape from kubeplex.placement.llm.MODELS (default: %(default)s)")
    p.add_argument("--gpu", default="H100-80GB",
                   help="GPU from kubeplex.placement.hardware.GPUS (default: %(default)s)")
    p.add_argument("--tp", "--tensor-parallel-size", dest="tp", type=int, default=1)
    p.add_argument("--pp", "--pipeline-parallel-size", dest="pp", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None,
                   help="name requests use (default: the model profile)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of each GPU the engine may use (KV capacity follows)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context limit (default: the model's, capped at the KV capacity)")
    p.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens one step may compute (chunked prefill; default: vLLM's for "
                        "the GPU: 8192 on H100/H200, 2048 on A100, L4 and CPU)")
    p.add_argument("--startup-seconds", type=float, default=0.0,
                   help="simulated cold start before the port opens (default: 0)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="wall seconds per simulated second (0.1 = 10x faster; default: 1)")
    p.add_argument("--shared-device", default=None, metavar="FILE",
                   help="booking file of the GPU group this engine shares with co-located sim "
                        "engines: their steps take turns on it (kubeplex-runtime passes one; "
                        "default: a device of its own)")
    p.add_argument("--enable-sleep-mode", action="store_true",
                   help="serve /sleep, /wake_up and /is_sleeping like vLLM on GPU")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=True, help="reuse the KV cache of prompt prefixes seen before "
                                      "(vLLM's automatic prefix caching; on by default)")
    p.add_argument("--block-size", type=int, default=VLLM_BLOCK_SIZE,
                   help="tokens per KV-cache block: the prefix cache's unit for text and "
                        "token-id prompts (default: %(default)s, vLLM's)")
    p.add_argument("--enable-lora", action="store_true",
                   help="serve LoRA adapters (kubeplex.runtime.sim.lora); their slots' memory "
                        "comes out of the KV cache")
    p.add_argument("--max-loras", type=int, default=1, help="adapter slots (default 1)")
    p.add_argument("--max-lora-rank", type=int, default=DEFAULT_ADAPTER_RANK,
                   help="rank of each slot (default %(default)s)")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                   help="adapters served from the start: name=path or JSON {name, path}")
    return p


def _fail(message: str) -> int:
    print(f"sim: error: {message}", file=sys.stderr)
    return 1


async def _serve(args: argparse.Namespace, prof: LLMProfile, capacity: int,
                 max_len: int, device: SharedDevice | None) -> None:
    started = time.monotonic()
    await asyncio.sleep(args.startup_seconds * args.time_scale)
    name = args.served_model_name or args.model_profile
    metrics = VllmMetrics(name, max_len)
    engine = SimEngine(prof, kv_capacity_tokens=capacity, max_num_seqs=args.max_num_seqs,
                       lanes=prof.pipeline_depth, metrics=metrics, time_scale=args.time_scale,
                       device=device, prefix_caching=args.enable_prefix_caching,
                       max_batched_tokens=args.max_num_batched_tokens
                       or vllm_batched_tokens(prof.gpu))
    weights = prof.weight_bytes_per_gpu / 1e9
    wake = (WAKE_FIXED_SECONDS + weights / HOST_TO_DEVICE_GBPS,
            WAKE_FIXED_SECONDS + weights / DISK_GBPS)
    lora = (LoraRegistry(name, args.max_loras, parse_modules(args.lora_modules),
                         metrics.registry) if args.enable_lora else None)
    server = SimServer(engine, served_name=name, root=args.model_profile, max_model_len=max_len,
                       sleep_mode=args.enable_sleep_mode, wake_seconds=wake, lora=lora,
                       block_size=args.block_size)
    apis.attach(server)  # /v1/embeddings, /v1/responses, /v1/rerank
    loop_task = asyncio.create_task(engine.run())
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    print(f"sim: serving {name} ({prof.model.name} on {args.tp}x{args.pp} {prof.gpu.name}, "
          f"KV {capacity} tokens, max_model_len {max_len}"
          f"{', shared device' if device else ''}) on http://{args.host}:{args.port} "
          f"after {time.monotonic() - started:.2f}s", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    loop_task.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.time_scale <= 0:
        return _fail("--time-scale must be > 0")
    if not 0 < args.gpu_memory_utilization <= 1:
        return _fail("--gpu-memory-utilization must be in (0, 1]")
    if args.max_num_seqs < 1:
        return _fail("--max-num-seqs must be >= 1")
    if args.max_num_batched_tokens is not None and args.max_num_batched_tokens < 1:
        return _fail("--max-num-batched-tokens must be >= 1")
    if args.block_size < 1:
        return _fail("--block-size must be >= 1")
    if args.enable_lora and (args.max_loras < 1 or args.max_lora_rank not in VLLM_LORA_RANKS):
        return _fail(f"--max-loras must be >= 1 and --max-lora-rank one of {VLLM_LORA_RANKS}")
    try:
        parse_modules(args.lora_modules)
        prof = profile(args.model_profile, args.gpu, args.tp, args.pp)
    except (PlacementError, ValueError) as exc:
        return _fail(str(exc))
    if args.enable_lora:  # the slots take GPU memory like weights (as placement counts them)
        prof = replace(prof, model=with_adapters(prof.model, [args.max_lora_rank] *
                                                  args.max_loras))
    capacity = prof.kv_capacity_tokens(args.gpu_memory_utilization)
    if capacity <= 0:
        return _fail(f"{prof.model.name} does not fit {args.gpu_memory_utilization:g} of "
                     f"{args.tp}x{args.pp} {prof.gpu.name}: no memory left for the KV cache; "
                     "increase --gpu-memory-utilization or tensor/pipeline parallelism")
    max_len = args.max_model_len or min(prof.model.max_model_len, capacity)
    if max_len > capacity:
        return _fail(f"the model's max seq len ({max_len}) is larger than the maximum number "
                     f"of tokens that can be stored in KV cache ({capacity}); decrease "
                     "--max-model-len or increase --gpu-memory-utilization")
    try:
        device = SharedDevice(args.shared_device) if args.shared_device else None
    except OSError as exc:
        return _fail(f"--shared-device {args.shared_device}: {exc.strerror}")
    try:
        run(_serve(args, prof, capacity, max_len, device))
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
