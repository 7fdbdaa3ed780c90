"""Executed co-location: two bursty models on the same two GPUs, shared vs dedicated groups.

AlpaServe's point, measured on the running local-mode system instead of the simulator: two
models whose bursts alternate, on two simulated H100s.

* **co-located**: one pool of 2 GPUs; placement packs both models into each group, so each
  model has 2 replicas (2 runtime processes, each hosting both models with a memory share);
* **dedicated**: two pools of 1 GPU each; each model has its own group (1 replica each).

Replica counts are pinned (``spec.scaling.replicas``): this compares placements, not the
autoscaler. Each engine admits at most 2 sequences (the sim engine's ``--max-num-seqs``,
as vLLM's), so one replica cannot keep up with a burst of ``--peak`` req/s of these
requests (512-token prompts, 128 output tokens) and two can. Two load shapes:

* **alternating** bursts: model B's load starts half a run after model A's, so their bursts
  never overlap (B's quiet level runs during A's burst and vice versa): where co-location
  pays;
* **overlapping** bursts: both start together, so both models burst at once and contend for
  the shared GPUs: where it cannot.

The sim engines of one runtime process share their group's simulated GPU
(``kubeplex.runtime.sim.device``): their steps take turns, so a model bursting next to a
busy partner runs slower, as on a real GPU (time-slicing, no MPS overlap).

Usage: .venv/bin/python benchmarks/placement/coloc_executed.py [--peak 3] [--duration 30]
       [--repeats 2] [--bursts alternating,overlapping]
Writes benchmarks/placement/results/coloc-executed.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

from kubeplex.operator.local.load import LoadResult, run_load
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).resolve().parent / "results"
#: Two small models placement packs together on an H100 (memory shares ~0.46 + 0.44).
MODELS = {"chat": ("hf://meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
          "coder": ("hf://Qwen/Qwen2.5-7B-Instruct", "qwen-2.5-7b")}
SLO_S = 1.0
PROMPT_TOKENS = 512
OUTPUT_TOKENS = 128
MAX_NUM_SEQS = 2
#: Seconds to wait for `kubeplex up` to plan and its replicas to be ready.
READY_TIMEOUT_S = 180.0


def _pool(name: str, gpus: int) -> str:
    return f"""apiVersion: kubeplex.io/v1alpha1
kind: GPUPool
metadata: {{name: {name}}}
spec: {{gpu: {{product: H100-80GB}}, gpusPerNode: 2, maxGPUs: {gpus}, warmPool: {{size: 0}}}}
"""


def _model(name: str, pool: str, replicas: int) -> str:
    uri, profile = MODELS[name]
    return f"""apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{uri: "{uri}", profile: {profile}, engineArgs: ["--max-num-seqs", "{MAX_NUM_SEQS}"]}}
  engine: sim
  pool: {pool}
  slo: {{ttftSeconds: {SLO_S}}}
  scaling: {{minReplicas: 1, maxReplicas: 2, replicas: {replicas}}}
  workload: {{requestsPerSecond: 0.5, burstiness: 4, promptTokens: {PROMPT_TOKENS},
             outputTokens: {OUTPUT_TOKENS}}}
"""


SETTINGS = """apiVersion: local.kubeplex.io/v1alpha1
kind: LocalSettings
spec: {tickSeconds: 1, coldStartSeconds: 1, holdTimeoutSeconds: 60}
"""


def scenario(kind: str) -> str:
    if kind == "co-located":
        docs = [_pool("shared", 2), _model("chat", "shared", 2), _model("coder", "shared", 2)]
    else:
        docs = [_pool("pool-chat", 1), _pool("pool-coder", 1), _model("chat", "pool-chat", 1),
                _model("coder", "pool-coder", 1)]
    return "---\n".join([*docs, SETTINGS])


class Up:
    """``kubeplex up`` as a child process (cwd outside the checkout)."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeplex.cli", "up", str(path), "--no-live",
             "--gateway-port", self.url.rsplit(":", 1)[1], "--workdir", str(workdir / "run")],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = httpx.get(self.url + "/kubeplex/v1/status", timeout=5).json()
            return data
        except (httpx.HTTPError, ValueError):
            return None

    def wait_ready(self, replicas: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kubeplex up exited {self.proc.returncode}")
            status = self.status()
            if status and all(m["ready"] == replicas for m in status["models"]):
                return [g for p in status["pools"] for g in p["groups"]]
            time.sleep(0.5)
        raise SystemExit(f"replicas not ready within {READY_TIMEOUT_S:g} s: {self.status()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


BURSTS = ("alternating", "overlapping")


async def load(url: str, bursts: str, peak: float, duration: float, seed: int
               ) -> dict[str, LoadResult]:
    """chat's burst run, and coder's starting half a run later (alternating: the bursts
    never overlap) or at the same time (overlapping: they coincide)."""
    async def later() -> LoadResult:
        await asyncio.sleep(duration / 2 if bursts == "alternating" else 0.0)
        return await run_load(url, "coder", rate=peak, duration=duration, pattern="burst",
                              prompt_tokens=PROMPT_TOKENS, max_tokens=OUTPUT_TOKENS,
                              seed=seed + 1)
    chat, coder = await asyncio.gather(
        run_load(url, "chat", rate=peak, duration=duration, pattern="burst",
                 prompt_tokens=PROMPT_TOKENS, max_tokens=OUTPUT_TOKENS, seed=seed),
        later())
    return {"chat": chat, "coder": coder}


def score(results: dict[str, LoadResult]) -> dict[str, Any]:
    samples = [s for r in results.values() for s in r.samples]
    good = sum(1 for s in samples if s.status == 200 and s.ttft is not None and s.ttft <= SLO_S)
    ttfts = sorted(s.ttft for s in samples if s.status == 200 and s.ttft is not None)
    p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None
    return {"requests": len(samples), "failed": sum(1 for s in samples if s.status != 200),
            "attainment": good / len(samples) if samples else 0.0, "p99_ttft_s": p99,
            "per_model": {m: {"requests": len(r.samples),
                              "attainment": sum(1 for s in r.samples if s.status == 200
                                                and s.ttft is not None and s.ttft <= SLO_S)
                              / max(1, len(r.samples))} for m, r in results.items()}}


def run(kind: str, bursts: str, peak: float, duration: float, seed: int,
        root: Path) -> dict[str, Any]:
    workdir = root / f"{kind}-{bursts}-{seed}"
    workdir.mkdir(parents=True)
    path = workdir / "scenario.yaml"
    path.write_text(scenario(kind))
    up = Up(path, workdir)
    try:
        groups = up.wait_ready(2 if kind == "co-located" else 1)
        results = asyncio.run(load(up.url, bursts, peak, duration, seed))
    finally:
        up.stop()
    return {"kind": kind, "bursts": bursts, "seed": seed, "processes": len(groups),
            "gpus": sum(g["gpus"] for g in groups),
            "groups": [sorted(g["models"]) for g in groups], **score(results)}


def plot(runs: list[dict[str, Any]], path: Path, peak: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [(b, k) for b in BURSTS for k in ("co-located", "dedicated")
             if any(r["bursts"] == b and r["kind"] == k for r in runs)]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (bursts, kind) in enumerate(cases):
        mine = [r for r in runs if r["kind"] == kind and r["bursts"] == bursts]
        color = "C0" if kind == "co-located" else "C1"
        ax.scatter([i] * len(mine), [100 * r["attainment"] for r in mine], s=40, color=color)
        ax.bar(i, 100 * sum(r["attainment"] for r in mine) / len(mine), alpha=0.4, color=color)
        bx.scatter([i] * len(mine), [r["p99_ttft_s"] for r in mine], s=40, color=color)
        bx.bar(i, sum(r["p99_ttft_s"] for r in mine) / len(mine), alpha=0.4, color=color)
    labels = [f"{k}\n{b} bursts" for b, k in cases]
    for axis, label in ((ax, f"% requests with TTFT <= {SLO_S:g} s"), (bx, "p99 TTFT (s)")):
        axis.set_xticks(range(len(cases)), labels, fontsize=8)
        axis.set_ylabel(label)
    bx.axhline(SLO_S, color="gray", linestyle="--", linewidth=1)
    fig.suptitle(f"2 bursty models on 2 simulated H100s (shared GPU time-sliced), bursts to "
                 f"{peak:g} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", type=float, default=3.0, help="burst rate per model (req/s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per model run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bursts", default=",".join(BURSTS),
                        help="comma-separated load shapes: alternating, overlapping")
    args = parser.parse_args()
    shapes = [b for b in args.bursts.split(",") if b]
    if not shapes or any(b not in BURSTS for b in shapes):
        parser.error(f"--bursts: a comma-separated list of {', '.join(BURSTS)}, "
                     f"got {args.bursts!r}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    runs = []
    with tempfile.TemporaryDirectory(prefix="kubeplex-coloc-") as tmp, Progress() as bar:
        task = bar.add_task("runs", total=2 * len(shapes) * args.repeats)
        for seed in range(args.repeats):
            for bursts in shapes:
                for kind in ("co-located", "dedicated"):  # interleaved: same machine load
                    bar.update(task, description=f"{kind}, {bursts} bursts, seed {seed}")
                    runs.append(run(kind, bursts, args.peak, args.duration, seed, Path(tmp)))
                    bar.advance(task)
    RESULTS.mkdir(exist_ok=True)
    out = {"peak_rps": args.peak, "duration_s": args.duration, "slo_ttft_s": SLO_S,
           "max_num_seqs": MAX_NUM_SEQS, "runs": runs}
    (RESULTS / "coloc-executed.json").write_text(json.dumps(out, indent=2))
    plot(runs, RESULTS / "coloc-executed.png", args.peak)
    for r in runs:
        print(f"{r['kind']:>10} {r['bursts']:>11} seed {r['seed']}: {r['processes']} "
              f"processes on {r['gpus']} "
              f"GPUs {r['groups']}; {r['requests']} requests, {r['failed']} failed, "
              f"{100 * r['attainment']:.1f}% within {SLO_S:g} s, p99 TTFT "
              f"{r['p99_ttft_s']:.2f} s")


if __name__ == "__main__":
    main()
