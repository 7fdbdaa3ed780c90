"""The OpenAI surface users expect, through local mode with the official ``openai`` SDK:
LoRA adapters listed and served by name (examples/local-lora), completions, streaming chat,
embeddings and responses, rerank, and the W3C trace context reaching both routers' log lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from kubeplex.runtime.sim.apis import EMBEDDING_DIM

pytestmark = pytest.mark.timeout(300)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "local-lora"
BASE, ADAPTERS = "llama-8b", ("llama-8b-sql", "llama-8b-support")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def client(start_up: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KUBEPLEX_ACCESS_LOG", "true")  # the gateway and its runtimes log
    up = start_up([EXAMPLE])
    up.wait_for("a ready replica", lambda: up.model()["ready"] >= 1, 120)
    sdk = openai.OpenAI(base_url=up.url + "/v1", api_key="unused", max_retries=0)
    sdk.up = up  # type: ignore[attr-defined]
    return sdk


def test_adapters_are_listed_and_each_answers_a_completion(client: Any) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {BASE, *ADAPTERS}
    assert all(getattr(cards[a], "parent", None) == BASE for a in ADAPTERS)
    for model in (BASE, *ADAPTERS):
        out = client.completions.create(model=model, prompt="hello there", max_tokens=4)
        assert out.usage.completion_tokens == 4
        assert out.choices[0].text
    with pytest.raises(openai.NotFoundError, match="llama-8b-sql"):
        client.completions.create(model="llama-8b-nope", prompt="x", max_tokens=1)


def test_streaming_chat_on_an_adapter(client: Any) -> None:
    stream = client.chat.completions.create(
        model=ADAPTERS[1], messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6


def test_embeddings_responses_and_rerank_pass_through(client: Any) -> None:
    emb = client.embeddings.create(model=BASE, input=["fast red cars", "slow boats"])
    assert [len(d.embedding) for d in emb.data] == [EMBEDDING_DIM, EMBEDDING_DIM]
    assert emb.usage.prompt_tokens > 0
    resp = client.responses.create(model=ADAPTERS[0], input="write a query",
                                   max_output_tokens=5)
    assert resp.status == "completed" and resp.output_text
    assert resp.usage.output_tokens == 5
    up = client.up
    rerank = httpx.post(up.url + "/v1/rerank", timeout=30, json={
        "model": BASE, "query": "fast cars", "top_n": 2,
        "documents": ["slow boats", "fast cars are red", "cats"]})
    assert rerank.status_code == 200, rerank.text
    assert [r["index"] for r in rerank.json()["results"]] == [1, 0]


def test_the_trace_context_reaches_both_routers_log_lines(client: Any) -> None:
    out = client.completions.create(model=ADAPTERS[0], prompt="trace me", max_tokens=2,
                                    extra_headers={"traceparent": TRACEPARENT,
                                                   "tracestate": "vendor=1"})
    assert out.usage.completion_tokens == 2
    up = client.up

    def traced(text: str) -> list[str]:
        return [line for line in text.splitlines() if f"trace_id={TRACE_ID}" in line]

    def runtime_logs() -> str:  # local mode copies each runtime's output into run/<group>.log
        return "".join(p.read_text() for p in (up.log_path.parent / "run").glob("*.log"))

    gateway = up.wait_for("the gateway's access line", lambda: traced(up.log()), 10, 0.1)
    runtime = up.wait_for("the runtime's access line", lambda: traced(runtime_logs()), 10, 0.1)
    assert len(gateway) == 1 and "path=/v1/completions" in gateway[0]
    assert len(runtime) == 1 and "status=200" in runtime[0]
