"""Hostile input on every HTTP surface: no 5xx, no traceback, every 4xx a JSON error.

Property-based (hypothesis) over request bodies and headers, against the real servers: the
gateway (in process, in front of a real runtime with a sim engine), the runtime's router and
control API and the sim engine behind it (their process logs are checked for tracebacks),
and the operator's ``/alerts`` (in process). The surfaces run in a background event loop so
hypothesis drives them with a plain synchronous client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeplex.gateway import Gateway, Replica
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._server import alerts_app
from kubeplex.operator._settings import Settings
from kubeplex.runtime._limits import MAX_BODY_BYTES, MAX_JSON_DEPTH
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(600)

TOKEN = "fuzz-token"
#: Simulated time runs 1000x faster than real time: a fuzzed max_tokens of thousands of
#: tokens is answered in well under a second.
SIM_ARGS = ("--time-scale", "0.001")
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@dataclass
class Memo:
    pool_of: dict[str, str] = field(default_factory=lambda: {"ns/m": "pool"})
    triggers: dict[str, dict[str, str]] = field(default_factory=dict)

    def wake(self, pool: str) -> None:
        pass


class Surfaces:
    """The servers under test, on one event loop in a background thread."""

    def __init__(self, runtime: RuntimeProcess) -> None:
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateway_url = ""
        self.alerts_url = ""
        self.no_token_url = ""
        self._cleanup: list[Callable[[], Any]] = []

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(60)

    async def _start(self) -> None:
        gw = Gateway({"m": "default/m"}, hold_timeout=2, hold_limit=10,
                     retry_after=lambda model: 1.0)
        port = free_port()
        runner = await gw.open("127.0.0.1", port)
        gw.add(Replica("m", "rt", self.runtime.url))
        self.gateway = gw
        self.gateway_url = f"http://127.0.0.1:{port}"
        self._cleanup += [runner.cleanup, gw.close]
        for token, attr in ((TOKEN, "alerts_url"), ("", "no_token_url")):
            app = alerts_app(Settings(alert_token=token), OperatorMetrics(), Memo())
            alerts_runner = web.AppRunner(app, access_log=None)
            await alerts_runner.setup()
            alerts_port = free_port()
            await web.TCPSite(alerts_runner, "127.0.0.1", alerts_port).start()
            setattr(self, attr, f"http://127.0.0.1:{alerts_port}")
            self._cleanup.append(alerts_runner.cleanup)

    async def _stop(self) -> None:
        for step in reversed(self._cleanup):
            await step()

    def __enter__(self) -> Surfaces:
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surfaces]:
    config = {"models": [model_entry("m", "sim", memory_share=0.5, sim_args=SIM_ARGS)]}
    with RuntimeProcess(config, tmp_path_factory.mktemp("fuzz-runtime")) as runtime, \
            Surfaces(runtime) as up:
        yield up
        log = runtime.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing the in-process servers log carries a traceback (aiohttp logs a handler's
    uncaught exception with one)."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


def _check(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert error, answer.text


# ---- strategies -------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
_small_int = st.one_of(st.integers(-3, 64), _scalars)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                  "content": st.one_of(st.text(max_size=40), _json)})
#: OpenAI-shaped bodies whose every field may have a wrong type or an odd value.
_openai = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.just("m"), _scalars, _json),
    "prompt": st.one_of(st.text(max_size=60), st.lists(st.integers(-1, 20), max_size=5),
                        _json),
    "messages": st.one_of(st.lists(_message, max_size=3), _json),
    "max_tokens": _small_int, "max_completion_tokens": _small_int, "min_tokens": _small_int,
    "n": st.one_of(st.integers(-1, 3), _scalars),
    "stream": st.one_of(st.booleans(), st.sampled_from(["false", "true", "yes", "maybe"]),
                        _scalars),
    "stream_options": st.one_of(st.none(), st.fixed_dictionaries(
        {"include_usage": _scalars}), _scalars),
    "stop": st.one_of(st.text(max_size=6), st.lists(st.text(max_size=6), max_size=3),
                      _scalars),
    "stop_token_ids": st.one_of(st.lists(st.integers(-2, 12), max_size=3), _scalars),
    "logprobs": st.one_of(st.integers(-1, 25), _scalars),
    "top_logprobs": st.one_of(st.integers(-1, 25), _scalars),
    "prompt_logprobs": _scalars, "echo": _scalars, "best_of": _small_int,
    "include_stop_str_in_output": _scalars, "continue_final_message": _scalars,
    "prompt_tokens": _small_int, "temperature": _scalars,
})


def _deep(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"


_bodies = st.one_of(
    _openai.map(lambda b: json.dumps(b).encode()),
    _json.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=200),
    st.integers(MAX_JSON_DEPTH - 2, 3000).map(_deep),
)
#: Header values a client could send (h11 refuses control characters and surrounding
#: whitespace; anything else goes, bytes above 0x7F included).
_header_value = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F) or b"x")
_headers = st.fixed_dictionaries({}, optional={
    "X-Request-Id": _header_value, "Content-Type": _header_value,
    "Authorization": _header_value, "X-Kubeplex-Namespace": _header_value})
_openai_paths = st.sampled_from(["/v1/completions", "/v1/chat/completions"])


# ---- the properties ---------------------------------------------------------------------------
@EXAMPLES
@given(path=_openai_paths, body=_bodies, headers=_headers)
def test_gateway_answers_every_body_without_5xx(surfaces: Surfaces, path: str, body: bytes,
                                                headers: dict[str, bytes]) -> None:
    with httpx.Client(base_url=surfaces.gateway_url, timeout=60) as client:
        _check(client.post(path, content=body, headers=headers))


@EXAMPLES
@given(path=_openai_paths, body=_bodies, headers=_headers)
def test_runtime_router_and_sim_answer_every_body_without_5xx(
        surfaces: Surfaces, path: str, body: bytes, headers: dict[str, bytes]) -> None:
    with httpx.Client(base_url=surfaces.runtime.url, timeout=60) as client:
        _check(client.post(path, content=body, headers=headers))


@EXAMPLES
@given(body=st.one_of(st.binary(max_size=200), _json.map(lambda b: json.dumps(b).encode()),
                      st.integers(MAX_JSON_DEPTH - 2, 3000).map(_deep)),
       headers=_headers, with_token=st.booleans())
def test_alerts_answer_every_body_without_5xx(surfaces: Surfaces, body: bytes,
                                              headers: dict[str, bytes],
                                              with_token: bool) -> None:
    if with_token:
        headers = {**headers, "Authorization": f"Bearer {TOKEN}".encode()}
    answer = httpx.post(surfaces.alerts_url + "/alerts", content=body, headers=headers,
                        timeout=30)
    _check(answer)
    assert answer.status_code in (200, 400, 401)


@EXAMPLES
@given(body=st.one_of(st.binary(max_size=100), st.integers(MAX_JSON_DEPTH, 3000).map(_deep)),
       name=st.text(max_size=20), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       tail=st.sampled_from(["", "/sleep", "/wake", "/x"]))
def test_control_api_answers_every_request_without_5xx(surfaces: Surfaces, body: bytes,
                                                       name: str, method: str,
                                                       tail: str) -> None:
    """Bodies that are not a model (binary, too deep) and model names that are not hosted:
    the control API never loads, unloads or sleeps anything here, and never fails."""
    url = surfaces.runtime.control
    with httpx.Client(base_url=url, timeout=30) as client:
        load = client.post("/kubeplex/v1/models", content=body)
        assert load.status_code == 400 and load.json()["error"]
        path = "/kubeplex/v1/models/" + quote(name or "none", safe="") + tail
        answer = client.request(method, path)
        assert answer.status_code in (404, 405), answer.text
        assert answer.json()["error"]
    assert [m["name"] for m in surfaces.runtime.status()["models"]] == ["m"]


def test_framework_errors_are_json_everywhere(surfaces: Surfaces) -> None:
    """404 (no such path), 405 (wrong method) and 413 (body too large) from aiohttp itself
    come back as JSON errors on every surface, and the limits agree between them."""
    big = b'{"model": "m", "prompt": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    for base in (surfaces.gateway_url, surfaces.runtime.url):
        with httpx.Client(base_url=base, timeout=60) as client:
            for answer, status in ((client.get("/nope"), 404),
                                   (client.get("/v1/completions"), 405),
                                   (client.post("/v1/completions", content=big), 413)):
                assert answer.status_code == status, (base, answer.text[:200])
                assert answer.json()["error"]["code"] == status
    for path in ("/nope", "/kubeplex/v1/drain"):
        answer = httpx.get(surfaces.runtime.control + path, timeout=10)
        assert answer.status_code in (404, 405) and answer.json()["error"]
    answer = httpx.post(surfaces.alerts_url + "/alerts", content=b"x" * (2 << 20),
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]


def test_a_missing_or_odd_model_is_400_naming_it(surfaces: Surfaces) -> None:
    for base in (surfaces.gateway_url, surfaces.runtime.url):
        for body in ({"prompt": "x"}, {"model": None, "prompt": "x"},
                     {"model": 3, "prompt": "x"}, {"model": "", "prompt": "x"}):
            answer = httpx.post(base + "/v1/completions", json=body, timeout=30)
            assert answer.status_code == 400, (base, body, answer.text)
            assert answer.json()["error"]["param"] == "model"


def test_a_string_false_stream_does_not_stream(surfaces: Surfaces) -> None:
    for base in (surfaces.gateway_url, surfaces.runtime.url):
        answer = httpx.post(base + "/v1/completions", json={
            "model": "m", "prompt": "x", "max_tokens": 3, "stream": "false"}, timeout=30)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.json()["usage"]["completion_tokens"] == 3


def test_alerts_without_a_token_configured_answer_503(surfaces: Surfaces) -> None:
    answer = httpx.post(surfaces.no_token_url + "/alerts", json={"version": "4"},
                        headers={"Authorization": "Bearer anything"}, timeout=10)
    assert answer.status_code == 503
    assert "no alert token configured" in answer.json()["error"]
    odd = httpx.post(surfaces.alerts_url + "/alerts", json={"version": "4"},
                     headers={"Authorization": "Bearer \u00e9t\u00e9".encode()}, timeout=10)
    assert odd.status_code == 401
