"""Request migration and failure handling in the gateway, over real runtimes with sim engines.

A replica that dies (``kill -9`` of its runtime) or leaves (``Gateway.remove``) while
requests generate on it: each request resumes on another replica from the text it already
had, so the client's text is exactly the one an uncut generation gives (the sim's text is a
function of the context, like greedy decoding), its stream ends with ``[DONE]``, and usage
counts every token once. A dead replica is out of routing after the first failure, and
requests held for a model whose engine restarts are released when the engine is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewaykit import opened_gateway

from kubeplex.gateway import Gateway, MigrationPolicy, Replica
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.sim.sampling import Sampling, generate

pytestmark = pytest.mark.timeout(180)

#: The sim's 8B/H100 profile decodes a token in about 9 ms: 300 tokens take ~3 s, long
#: enough to cut a generation in the middle.
TOKENS = 300
PROMPT = "Tell me about foxes."
MIGRATIONS = "kubeplex_gateway_migrations_total"


def _runtime(tmp_path: Path, name: str, **config: Any) -> RuntimeProcess:
    return RuntimeProcess({"models": [model_entry("m", "sim", memory_share=0.5)],
                           "drainGraceSeconds": 60, **config}, tmp_path / name)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    async with opened_gateway(migration=MigrationPolicy(migrate_after_s=0.3)) as served:
        yield served


def _expected(chat: bool) -> str:
    """What an uncut generation of TOKENS tokens says (a new chat reply starts afresh)."""
    return generate("" if chat else PROMPT, TOKENS, Sampling()).text


def _body(chat: bool, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": TOKENS, "stream": stream,
                            "stream_options": {"include_usage": True} if stream else None}
    if chat:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    return body


async def _stream(client: httpx.AsyncClient, chat: bool, on_event: Any = None
                  ) -> tuple[str, list[dict[str, Any]], bool]:
    """(text, parsed events, ended with [DONE]) of one streamed request."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    text, parsed, done = "", [], False
    async with client.stream("POST", path, json=_body(chat, True)) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                assert not done, "an event after [DONE]"
                event = json.loads(line[6:])
                assert "error" not in event, event
                parsed.append(event)
                for choice in event["choices"]:
                    text += (choice.get("delta") or {}).get("content") or "" if chat \
                        else choice["text"]
                if on_event is not None:
                    await on_event(len(parsed))
    return text, parsed, done


async def _metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    total = 0.0
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def _kill(rt: RuntimeProcess) -> None:
    assert rt.proc is not None
    rt.proc.send_signal(signal.SIGKILL)  # its engines die with it (PR_SET_PDEATHSIG)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_a_stream_whose_replica_dies_continues_elsewhere(gateway, tmp_path: Path,
                                                               chat: bool) -> None:
    gw, url = gateway
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        gw.add(Replica("m", "b", b.url))
        gw.replicas["m"][1].acquire()  # b looks busy: the stream starts on a

        async def kill_a_midway(events: int) -> None:
            if events == 40:
                _kill(a)
                gw.replicas["m"][1].release()

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            text, events, done = await _stream(client, chat, kill_a_midway)
            moved = await _metric(client, MIGRATIONS, cause="replica-failed")
        assert b.proc is not None and b.proc.poll() is None
    assert done
    assert text == _expected(chat)  # no gap, no repeat
    ids = {e["id"] for e in events}
    assert len(ids) == 1  # one stream, as the client sees it
    roles = [e for e in events if e["choices"] and "role" in e["choices"][0].get("delta", {})]
    assert len(roles) == (1 if chat else 0)
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + TOKENS
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length"]
    assert moved == 1
    assert gw.replicas["m"][0].down is not None  # a is out of routing


async def _cut_plain_request(gw: Gateway, url: str,
                             tmp_path: Path) -> tuple[httpx.Response, float, float]:
    """A plain request starts on replica a, killed a third of the way in: its answer, the
    migrations counted, and the tokens replica b generated."""
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        gw.add(Replica("m", "b", b.url))
        gw.replicas["m"][1].acquire()  # b looks busy: the request starts on a
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            pending = asyncio.create_task(client.post("/v1/completions",
                                                      json=_body(False, False)))
            await asyncio.sleep(1.0)  # about a third of the generation
            _kill(a)
            gw.replicas["m"][1].release()
            answer = await pending
            moved = await _metric(client, MIGRATIONS)
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as client_b:
            generated_on_b = await _metric(client_b, "vllm:generation_tokens_total")
    return answer, moved, generated_on_b


async def test_a_plain_request_whose_replica_dies_gets_one_whole_answer(gateway,
                                                                        tmp_path: Path) -> None:
    answer, moved, generated_on_b = await _cut_plain_request(*gateway, tmp_path)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == _expected(False)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == TOKENS
    assert moved == 1
    assert generated_on_b < TOKENS  # b generated the rest only


async def test_without_resume_plain_a_cut_plain_request_starts_again(tmp_path: Path) -> None:
    """``resume_plain`` off (``KUBEPLEX_RESUME_PLAIN_REQUESTS=false``): a plain request goes
    upstream as it came, and one whose replica dies is sent again from the start (nothing
    was sent to the client yet): the whole answer, no migration counted."""
    policy = MigrationPolicy(migrate_after_s=0.3, resume_plain=False)
    async with opened_gateway(migration=policy) as (gw, url):
        answer, moved, generated_on_b = await _cut_plain_request(gw, url, tmp_path)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["choices"][0]["text"] == _expected(False)
    assert out["usage"]["completion_tokens"] == TOKENS
    assert moved == 0
    assert generated_on_b == TOKENS  # b generated all of it again, not the rest


async def test_a_leaving_replica_hands_its_requests_over(gateway, tmp_path: Path) -> None:
    """Scale-down: the gateway stops routing to a, whose long generations move to b
    ``migrate_after_s`` later, so waiting for a takes that long, not the whole generation."""
    gw, url = gateway
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            streams = [asyncio.create_task(_stream(client, chat=i % 2 == 1)) for i in range(4)]
            await asyncio.sleep(0.8)
            gw.add(Replica("m", "b", b.url))
            leaving = gw.remove("m", "a")
            assert leaving is not None and leaving.in_flight == 4
            started = time.monotonic()
            assert await leaving.wait_idle(30)
            idle_after = time.monotonic() - started
            results = await asyncio.gather(*streams)
            moved = await _metric(client, MIGRATIONS, cause="replica-left")
    assert idle_after < 1.5  # migrate_after_s is 0.3 s; the generations had ~2 s left
    for i, (text, _, done) in enumerate(results):
        assert done
        assert text == _expected(chat=i % 2 == 1)
    assert moved == 4


async def test_a_dead_replica_is_skipped_after_the_first_failure(gateway,
                                                                 tmp_path: Path) -> None:
    gw, url = gateway
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        gw.add(Replica("m", "b", b.url))
        _kill(a)
        assert a.proc is not None
        a.proc.wait()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"model": "m", "prompt": "x", "max_tokens": 4}
            answers = [await client.post("/v1/completions", json=body) for _ in range(20)]
            retries = await _metric(client, "kubeplex_gateway_retries_total")
            ready = await _metric(client, "kubeplex_gateway_replicas")
        assert b.proc is not None and b.proc.poll() is None
    assert [r.status_code for r in answers] == [200] * 20
    assert retries <= 1  # only the first request found a dead
    assert gw.replicas["m"][0].down is not None
    assert ready == 1


async def test_held_requests_go_as_soon_as_the_engine_is_back(gateway, tmp_path: Path) -> None:
    """The only replica's engine dies; the runtime restarts it. Requests meanwhile are held
    and forwarded the moment a probe finds the engine serving, not at the hold timeout."""
    gw, url = gateway
    with _runtime(tmp_path, "a", restartInitialSeconds=1.0) as a:
        gw.add(Replica("m", "a", a.url))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"model": "m", "prompt": "x", "max_tokens": 4}
            assert (await client.post("/v1/completions", json=body)).status_code == 200
            engine = a.engine("m")
            os.kill(engine["pid"], signal.SIGKILL)
            await asyncio.sleep(0.2)  # the runtime sees the exit (it polls every 50 ms)
            started = time.monotonic()
            answers = await asyncio.gather(*(client.post("/v1/completions", json=body)
                                             for _ in range(4)))
            waited = time.monotonic() - started
        back = a.engine("m")
    assert [r.status_code for r in answers] == [200] * 4
    assert back["restarts"] == engine["restarts"] + 1
    # Restart backoff 1 s + a sim start (~1 s) + a probe interval, far below the 60 s hold.
    assert waited < 8, waited
    assert gw.replicas["m"][0].down is None


async def test_a_completion_resumes_from_token_ids(gateway, tmp_path: Path) -> None:
    """Given token ids (the sim reports them only for a token-id prompt; vLLM for every
    prompt), the resumed prompt is the prompt's ids plus the generated ids: recomputation of
    the very same tokens."""
    gw, url = gateway
    prompt = [3, 1, 7]  # ends with token 7, " lazy": the reply goes on " dog."
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        gw.add(Replica("m", "b", b.url))
        gw.replicas["m"][1].acquire()
        body = {"model": "m", "prompt": prompt, "max_tokens": TOKENS, "stream": True}
        text, ids = "", []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client, \
                client.stream("POST", "/v1/completions", json=body) as answer:
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                ids += choice["token_ids"]
                if len(ids) == 40:
                    _kill(a)
                    gw.replicas["m"][1].release()
        assert b.proc is not None and b.proc.poll() is None
    expected = generate(7, TOKENS, Sampling())
    assert text == expected.text
    assert ids == list(expected.token_ids)
