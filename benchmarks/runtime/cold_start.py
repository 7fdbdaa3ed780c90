"""Cold start of one engine: process start -> listening/ready -> first token.

Starts the engine process exactly as kubeplex-runtime does (same command line, from
:func:`kubeplex.runtime.engines.launch`), timestamps every line of its output as it arrives,
polls ``/health`` until 200 (ready), then sends one streaming request and times its first
chunk. For vLLM the log lines mark the phases in between (imports, weights, engine init
(profiling, KV cache, warm-up), API server up). Repeats and reports medians.

    .venv/bin/python benchmarks/runtime/cold_start.py --engine sim --repeats 5
    .venv/bin/python benchmarks/runtime/cold_start.py --engine vllm --repeats 3

Writes benchmarks/runtime/results/cold_start_<engine>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kubeplex.runtime.config import parse_config
from kubeplex.runtime.engines import launch
from kubeplex.runtime.harness import benchmark_tiny_model, model_entry
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).parent / "results"
#: vLLM 0.32 log lines that end each start-up phase (first match wins), in order.
VLLM_PHASES = (
    ("imports and arg parsing", "non-default args"),
    ("engine-core process up (imports again)", "(EngineCore pid="),
    ("weights loaded", "Loading weights took"),
    ("engine init (profile, KV cache, warm-up)", "init engine (profile, create kv cache"),
    ("API server up", "Application startup complete"),
)


def _run_once(engine: str, tiny: Path | None, workdir: Path,
              env: dict[str, str]) -> dict[str, Any]:
    config = parse_config({"models": [model_entry("m", engine, tiny_model=tiny,
                                                  memory_share=0.9, env=env)],
                           "device": "cpu"})
    port = free_port()
    spec = launch(config.models[0], config, port, "cpu")
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    proc = subprocess.Popen(spec.argv, env=dict(spec.env), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def reader() -> None:
        for raw in proc.stdout or ():
            lines.append((time.monotonic() - start, raw.decode(errors="replace")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("engine exited:\n" + "".join(text for _, text in lines[-30:]))
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        ready = time.monotonic() - start
        body = {"model": "m", "prompt": "hello", "max_tokens": 4, "stream": True,
                "ignore_eos": True}
        first_token = 0.0
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            for _ in r.iter_raw():
                first_token = first_token or time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        thread.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    phases: dict[str, float] = {}
    if engine == "vllm":
        for name, marker in VLLM_PHASES:
            at = next((t for t, line in lines if marker in line), None)
            if at is not None:
                phases[name] = at
    phases["ready (/health 200)"] = ready
    phases["first token"] = first_token
    return phases


def _plot(runs: dict[str, float], engine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(runs) + 1.2))
    previous = 0.0
    for i, at in enumerate(runs.values()):
        ax.barh(i, at - previous, left=previous)
        ax.text(at, i, f" {at:.2f}s", va="center")
        previous = at
    ax.set_yticks(range(len(runs)), list(runs))
    ax.invert_yaxis()
    ax.set_xlabel("seconds since process start (median)")
    ax.set_title(f"cold start of one {engine} engine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra engine environment, e.g. VLLM_ENABLE_V1_MULTIPROCESSING=0")
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    tiny = None
    if args.engine == "vllm":
        tiny = benchmark_tiny_model()
        if tiny is None:
            return 2
    runs = []
    with tempfile.TemporaryDirectory() as tmp, Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task(f"{args.engine} cold starts", total=args.repeats)
        for _ in range(args.repeats):
            runs.append(_run_once(args.engine, tiny, Path(tmp), env))
            bar.advance(task)
    names = [n for n in runs[0] if all(n in r for r in runs)]
    median = {n: statistics.median(r[n] for r in runs) for n in names}
    table = Table(title=f"cold start, {args.engine} engine (median of {args.repeats})")
    table.add_column("phase ends")
    table.add_column("at (s)")
    table.add_column("phase (s)")
    previous = 0.0
    for name, at in median.items():
        table.add_row(name, f"{at:.2f}", f"{at - previous:.2f}")
        previous = at
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cold_start_{args.engine}{args.tag}.json"
    out.write_text(json.dumps({"args": vars(args), "median": median, "runs": runs,
                               "load_average_after": os.getloadavg()[0]}, indent=2))
    _plot(median, args.engine, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
