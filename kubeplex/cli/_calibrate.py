"""``kubeplex calibrate``: measure a running OpenAI-compatible engine, write a latency profile.

The measuring (HTTP, clocks) is here; the fitting is the pure
:mod:`kubeplex.placement.calibration`. Against a server at ``--url`` serving ``--served-model``:

* **prefill**: ``k`` concurrent completions of ``n``-token prompts (random token ids, different
  every time so a prefix cache cannot answer) with ``max_tokens`` 1; the time until the last
  answer is the batched prefill of ``k`` prompts (plus one HTTP round trip, which the fit's
  fixed term absorbs);
* **decode**: ``batch`` concurrent completions of ``context``-token prompts, with 1/8, 1/2 and
  all of ``--decode-tokens`` output tokens (``ignore_eos``); the slope of the completion time
  over the output tokens (the median of the pairwise slopes, Theil-Sen: one stalled run does
  not move it) is one decode step: the prefill and the HTTP round trip are the same in all
  three and drop out (a streamed response cannot time tokens: engines deliver them in
  bursts);
* each point is the **fastest of** ``--repeats`` runs: on a shared machine other work only
  ever adds time, so the minimum is the closest to the engine's own (the fit error then
  shows how much noise is left);
* **KV capacity**: vLLM's ``vllm:cache_config_info`` (``num_gpu_blocks`` x ``block_size``),
  else estimated from ``vllm:kv_cache_usage_perc`` while the largest decode batch runs (the
  tokens it holds over the share used), else ``--kv-tokens``.

``--refit FILE`` skips the measuring and fits the ``points`` of a file instead (e.g. numbers
measured on a machine without kubeplex, ``benchmarks/calibration/gpu_calibrate.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubeplex.cli import Commands
from kubeplex.errors import KubeplexError

__all__ = ["CalibrateError", "register"]

#: Token ids drawn for prompts: the byte tokens of a byte-level BPE (ids 16-255 exist in any
#: vocabulary we serve; the tiny test model's trained vocabulary is smaller than 1,024).
TOKEN_ID_RANGE = (16, 256)
#: Seconds one measurement request may take before the calibration gives up.
REQUEST_TIMEOUT_S = 600.0
#: How often the KV usage gauge is read while the largest decode batch runs (seconds).
KV_POLL_S = 0.05
DEFAULT_PROMPTS = "128,512,1024,2048"
DEFAULT_BATCHES = "1,4,16"
DEFAULT_DECODE_BATCHES = "1,8,32"
DEFAULT_CONTEXTS = "128,1024"


class CalibrateError(KubeplexError):
    """A calibration that cannot run (server unreachable, bad answers, bad arguments)."""


def register(cli: Commands) -> None:
    p = cli.command("calibrate", "measure a running OpenAI-compatible engine (prefill vs "
                    "prompt tokens and batch, decode step vs batch and context, KV capacity) "
                    "and write a latency profile that placement and the autoscaler use",
                    _calibrate)
    p.add_argument("--url", help="the engine's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", help="the model name requests use (default: the first "
                   "one /v1/models lists)")
    p.add_argument("--refit", type=Path, metavar="FILE",
                   help="fit the points of this file instead of measuring")
    p.add_argument("--model", required=True,
                   help="catalogue model shape the engine serves, e.g. llama-3.1-8b, tiny-llama")
    p.add_argument("--gpu", required=True, help="catalogue GPU it runs on, e.g. H100-80GB, cpu")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (default 1)")
    p.add_argument("--name", required=True, help="the profile's name, e.g. llama-3.1-8b-h100")
    p.add_argument("--engine", required=True, help="what served it, e.g. 'vllm 0.33'")
    p.add_argument("--source", default="", help="free text: machine, versions, command")
    p.add_argument("--memory-fraction", type=float, default=0.9,
                   help="the engine's --gpu-memory-utilization (default 0.9)")
    p.add_argument("--kv-tokens", type=int, help="KV capacity in tokens, when the engine "
                   "does not report it")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS,
                   help=f"prompt lengths for prefill (default {DEFAULT_PROMPTS})")
    p.add_argument("--batches", default=DEFAULT_BATCHES,
                   help=f"prompts per prefill batch (default {DEFAULT_BATCHES})")
    p.add_argument("--decode-batches", default=DEFAULT_DECODE_BATCHES,
                   help=f"sequences per decode batch (default {DEFAULT_DECODE_BATCHES})")
    p.add_argument("--contexts", default=DEFAULT_CONTEXTS,
                   help=f"prompt lengths of the decode runs (default {DEFAULT_CONTEXTS})")
    p.add_argument("--decode-tokens", type=int, default=40,
                   help="output tokens of each decode run (default 40)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per point; the fastest "
                   "counts (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="the profile file to write (JSON)")


def _counts(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise CalibrateError(f"{flag} must be a comma-separated list of counts >= 1, "
                             f"got {text!r}")
    return values


def _calibrate(args: argparse.Namespace) -> int:
    from kubeplex.placement.calibration import (
        calibration_to_dict,
        fit_calibration,
        points_from_dict,
    )
    from kubeplex.placement.llm import calibrated, profile

    profile(args.model, args.gpu, args.tp, args.pp)  # unknown names fail before measuring
    if (args.url is None) == (args.refit is None):
        raise CalibrateError("give --url (measure a running engine) or --refit FILE "
                             "(fit measured points), not both")
    if not 0 < args.memory_fraction <= 1:
        raise CalibrateError(f"--memory-fraction must be in (0, 1], got {args.memory_fraction}")
    if args.refit is not None:
        try:
            data = json.loads(args.refit.read_text())
        except (OSError, ValueError) as err:
            raise CalibrateError(f"cannot read points from {args.refit}: {err}") from err
        prefill, decode = points_from_dict(data, str(args.refit))
        kv = args.kv_tokens
    else:
        prefill, decode, kv = asyncio.run(_measure(args))
    if kv is None:
        kv = profile(args.model, args.gpu, args.tp, args.pp).kv_capacity_tokens(
            args.memory_fraction)
        args.source = (args.source + "; " if args.source else "") + \
            "KV capacity from the analytic model (the engine reported none)"
    cal = fit_calibration(args.name, args.model, args.gpu, args.engine, prefill, decode, kv,
                          args.memory_fraction, args.tp, args.pp, args.source)
    calibrated(cal)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calibration_to_dict(cal, prefill, decode), indent=1) + "\n")
    print(f"wrote {args.out}: prefill {cal.prefill.fixed_s * 1e3:.2f} ms + "
          f"{cal.prefill.per_token_s * 1e6:.3f} us/token + {cal.prefill.per_token2_s * 1e12:.4f} "
          f"ps/token^2 (fit error median {cal.prefill_error.median:.1%}, max "
          f"{cal.prefill_error.max:.1%}); decode {cal.decode.fixed_s * 1e3:.2f} ms + "
          f"{cal.decode.per_seq_s * 1e6:.2f} us/seq + {cal.decode.per_context_s * 1e9:.4f} "
          f"ns/seq/context token (median {cal.decode_error.median:.1%}, max "
          f"{cal.decode_error.max:.1%}); KV {kv} tokens")
    return 0


# ---- measuring -----------------------------------------------------------------------------

class _Client:
    def __init__(self, url: str, model: str, seed: int) -> None:
        import httpx

        self.url, self.model = url.rstrip("/"), model
        self.rng = random.Random(seed)
        self.http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S,
                                      limits=httpx.Limits(max_connections=1024))

    def prompt(self, tokens: int) -> list[int]:
        return [self.rng.randrange(*TOKEN_ID_RANGE) for _ in range(tokens)]

    async def complete(self, tokens: int, max_tokens: int) -> float:
        """Seconds one completion took (prompt of ``tokens`` random ids)."""
        import httpx

        body = {"model": self.model, "prompt": self.prompt(tokens), "max_tokens": max_tokens,
                "ignore_eos": True, "temperature": 0.0}
        start = time.perf_counter()
        try:
            response = await self.http.post(self.url + "/v1/completions", json=body)
        except httpx.HTTPError as err:
            raise CalibrateError(f"{self.url} did not answer a completion: {err!r}") from err
        if response.status_code != 200:
            raise CalibrateError(f"{self.url} answered {response.status_code} to a "
                                 f"{tokens}-token prompt: {response.text[:300]}")
        return time.perf_counter() - start

    async def batch(self, count: int, tokens: int, max_tokens: int) -> list[float]:
        return list(await asyncio.gather(*(self.complete(tokens, max_tokens)
                                           for _ in range(count))))

    async def metrics(self) -> str:
        import httpx

        try:
            response = await self.http.get(self.url + "/metrics")
        except httpx.HTTPError as err:
            raise CalibrateError(f"cannot read {self.url}/metrics: {err!r}") from err
        return response.text if response.status_code == 200 else ""


async def _served_model(client: Any, url: str) -> str:
    import httpx

    try:
        listed = (await client.get(url.rstrip("/") + "/v1/models")).json()
        return str(listed["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        raise CalibrateError(f"cannot list the models at {url} ({err!r}); is an "
                             f"OpenAI-compatible server running there? Or pass "
                             f"--served-model") from err


def _kv_from_metrics(text: str) -> int | None:
    """vLLM's ``vllm:cache_config_info`` labels: num_gpu_blocks x block_size."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("vllm:cache_config_info"):
                    blocks = sample.labels.get("num_gpu_blocks")
                    size = sample.labels.get("block_size")
                    if blocks and size and blocks.isdigit() and size.isdigit():
                        return int(blocks) * int(size)
    except ValueError:
        return None
    return None


def _kv_usage(text: str, model: str) -> float | None:
    from kubeplex.autoscaler.metrics import KV_USAGE
    from kubeplex.autoscaler.sources import parse_metrics_text

    try:
        scrape = parse_metrics_text(text, model, 0.0)
    except KubeplexError:
        return None
    values = list(scrape.series(KV_USAGE).values())
    return max(values) if values else None


async def _measure(args: argparse.Namespace) -> tuple[list[Any], list[Any], int | None]:
    import httpx
    from rich.console import Console
    from rich.progress import Progress

    from kubeplex.placement.calibration import DecodePoint, PrefillPoint

    prompts = _counts(args.prompts, "--prompts")
    batches = _counts(args.batches, "--batches")
    decode_batches = _counts(args.decode_batches, "--decode-batches")
    contexts = _counts(args.contexts, "--contexts")
    if args.decode_tokens < 2 or args.repeats < 1:
        raise CalibrateError("need --decode-tokens >= 2 and --repeats >= 1")
    async with httpx.AsyncClient(timeout=30) as probe:
        model = args.served_model or await _served_model(probe, args.url)
    client = _Client(args.url, model, args.seed)
    prefill: list[PrefillPoint] = []
    decode: list[DecodePoint] = []
    kv = args.kv_tokens
    total = len(prompts) * len(batches) + len(decode_batches) * len(contexts)
    try:
        await client.complete(prompts[0], 1)  # warm-up (first-request costs)
        kv = kv or _kv_from_metrics(await client.metrics())
        with Progress(transient=True, console=Console(stderr=True)) as progress:
            bar = progress.add_task(f"calibrating {model}", total=total)
            for n in prompts:
                for k in batches:
                    await client.batch(k, n, 1)  # warm-up: a new shape may compile
                    times = [max(await client.batch(k, n, 1)) for _ in range(args.repeats)]
                    prefill.append(PrefillPoint(n, k, min(times)))
                    progress.advance(bar)
            largest = max(decode_batches)
            for b in decode_batches:
                for ctx in contexts:
                    watch = kv is None and b == largest and ctx == max(contexts)
                    step, usage = await _decode_step(client, b, ctx, args, watch)
                    if usage:
                        kv = round(b * (ctx + args.decode_tokens) / usage)
                    decode.append(DecodePoint(b, ctx + args.decode_tokens // 2, step))
                    progress.advance(bar)
    finally:
        await client.http.aclose()
    return prefill, decode, kv


async def _decode_step(client: _Client, batch: int, context: int, args: argparse.Namespace,
                       watch_kv: bool) -> tuple[float, float | None]:
    """One decode step's seconds (see the module docstring), and the peak KV usage when
    watched."""
    peak: list[float] = []

    async def poll(done: Callable[[], bool]) -> None:
        while not done():
            usage = _kv_usage(await client.metrics(), client.model)
            if usage:
                peak.append(usage)
            await asyncio.sleep(KV_POLL_S)

    outputs = sorted({max(1, args.decode_tokens // 8), max(2, args.decode_tokens // 2),
                      args.decode_tokens})
    await client.batch(batch, context, outputs[0])  # warm-up: a new shape may compile
    times = []
    for tokens in outputs:
        runs = []
        for _ in range(args.repeats):
            task = asyncio.ensure_future(client.batch(batch, context, tokens))
            if watch_kv and tokens == outputs[-1]:
                await poll(task.done)
            runs.append(statistics.median(await task))
        times.append(min(runs))
    # Theil-Sen: the median of the pairwise slopes shrugs off one stalled run.
    slope = statistics.median((times[j] - times[i]) / (outputs[j] - outputs[i])
                              for i in range(len(outputs)) for j in range(i + 1, len(outputs)))
    if slope <= 0:
        raise CalibrateError(f"decode at batch {batch}, context {context}: longer outputs were "
                             f"not slower ({times}); raise --decode-tokens or --repeats")
    return slope, (max(peak) if peak else None)
