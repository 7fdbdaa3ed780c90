"""The pure half of request migration (kubeplex.gateway._resume): which requests can move,
the body that continues one, and the client's view of a stream that moved."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeplex.gateway._resume import Progress, Resumable, resumable
from kubeplex.runtime._limits import BadRequestBody

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def _plan(path: str = COMPLETIONS, **fields: Any) -> Resumable:
    body = {"model": "m", "prompt": "Once", "max_tokens": 10, "stream": True, **fields}
    if path == CHAT:
        body.pop("prompt")
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    plan = resumable(path, body, plain_too=True)
    assert isinstance(plan, Resumable), plan
    return plan


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode()


def _chunk(text: str, finish: str | None = None, ident: str = "cmpl-1") -> bytes:
    return _event({"id": ident, "object": "text_completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "text": text, "finish_reason": finish}]})


@pytest.mark.parametrize(("path", "fields", "why"), [
    (COMPLETIONS, {"n": 2}, "several choices"),
    (COMPLETIONS, {"best_of": 3}, "several choices"),
    (COMPLETIONS, {"echo": True}, "echo"),
    (COMPLETIONS, {"logprobs": 1}, "logprobs"),
    (CHAT, {"tools": [{"type": "function"}]}, "tools or structured output"),
    (CHAT, {"response_format": {"type": "json_object"}}, "tools or structured output"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "not one string or one list of token ids"),
    (CHAT, {"messages": "hi"}, "not a list of objects"),
    (COMPLETIONS, {"stream": False}, "resume_plain is off"),
])
def test_what_is_not_resumed_says_why(path: str, fields: dict[str, Any], why: str) -> None:
    body = {"model": "m", "prompt": "x", "messages": [], "stream": True, **fields}
    plain_too = "resume_plain" not in why
    assert why in str(resumable(path, body, plain_too=plain_too))


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": "ten"}, "max_tokens"), ({"n": 1.5}, "n"), ({"stream": "perhaps"}, "stream"),
    ({"stream_options": [1]}, "stream_options"),
])
def test_wrong_types_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestBody) as err:
        resumable(COMPLETIONS, {"model": "m", "prompt": "x", **fields}, plain_too=True)
    assert err.value.param == param


def test_a_completion_resumes_with_the_text_and_the_rest_of_the_budget() -> None:
    progress = Progress(_plan(min_tokens=5, prompt_tokens=100))
    progress.absorb_all(_chunk(" upon") + b"\n\n" + _chunk(" a") + b"\n\n")
    progress.next_attempt()
    body = json.loads(progress.resume_body())
    assert body["prompt"] == "Once upon a"
    assert (body["max_tokens"], body["min_tokens"], body["prompt_tokens"]) == (8, 3, 102)
    assert body["stream"] is True


def test_a_chat_resumes_by_continuing_the_assistant_message() -> None:
    plan = _plan(CHAT, max_completion_tokens=10)
    progress = Progress(plan)
    for delta in ({"role": "assistant", "content": ""}, {"content": "The"},
                  {"content": " quick"}):
        progress.absorb(_event({"id": "chatcmpl-1", "choices": [
            {"index": 0, "delta": delta, "finish_reason": None}]}))
    assert progress.tokens == 2 and progress.role_sent
    progress.next_attempt()
    body = json.loads(progress.resume_body())
    assert body["messages"][-1] == {"role": "assistant", "content": "The quick"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_completion_tokens"] == 8
    own = Progress(_plan(CHAT, continue_final_message=True, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Well,"}]))
    own.absorb(_event({"choices": [{"index": 0, "delta": {"content": " yes"}}]}))
    own.next_attempt()
    assert json.loads(own.resume_body())["messages"][-1]["content"] == "Well, yes"


def test_nothing_generated_resumes_with_the_original_body() -> None:
    progress = Progress(_plan())
    progress.next_attempt()
    assert json.loads(progress.resume_body())["prompt"] == "Once"


def test_the_resumed_stream_reads_as_one_stream() -> None:
    plan = _plan(CHAT, stream_options={"include_usage": True})
    progress = Progress(plan)
    first = [_event({"id": "A", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": ""}}]}),
             _event({"id": "A", "choices": [{"index": 0, "delta": {"content": "The"}}]})]
    for event in first:
        progress.absorb(event)
    progress.sent = len(first)
    progress.next_attempt()
    role = _event({"id": "B", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "content": ""}}]})
    token = _event({"id": "B", "choices": [{"index": 0, "delta": {"content": " quick"}}]})
    usage = _event({"id": "B", "choices": [], "usage": {
        "prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}})
    assert progress.rewrite(role) is None  # the client had its role chunk
    out = progress.rewrite(token)
    assert out is not None and json.loads(out[6:])["id"] == "A"
    counted = progress.rewrite(usage)
    assert counted is not None
    assert json.loads(counted[6:])["usage"] == {"prompt_tokens": 19, "completion_tokens": 2,
                                                 "total_tokens": 21}
    assert progress.rewrite(b"data: [DONE]") == b"data: [DONE]"


def test_a_plain_answer_is_built_from_every_attempt() -> None:
    progress = Progress(_plan(stream=False))
    progress.absorb(_event({"id": "cmpl-A", "created": 7, "model": "m", "choices": [
        {"index": 0, "text": "The", "finish_reason": None}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}))
    progress.next_attempt()
    progress.absorb(_chunk(" quick", finish="length", ident="cmpl-B"))
    progress.absorb(_event({"id": "cmpl-B", "choices": [], "usage": {
        "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}))
    answer = progress.answer()
    assert answer["id"] == "cmpl-A" and answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "The quick"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_the_budget_and_what_cannot_continue() -> None:
    progress = Progress(_plan(max_tokens=2))
    progress.absorb(_chunk("a"))
    assert progress.budget_left()
    progress.absorb(_chunk("b"))
    assert not progress.budget_left()
    stuck = Progress(_plan(CHAT))
    stuck.absorb(_event({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}))
    assert stuck.stuck is not None
    error = Progress(_plan())
    error.absorb(_event({"error": {"message": "boom"}}))
    assert error.stuck is not None


def _ids_chunk(text: str, ids: list[int], prompt_ids: list[int] | None = None) -> bytes:
    return _event({"id": "cmpl-1", "choices": [{"index": 0, "text": text, "token_ids": ids,
                                                "prompt_token_ids": prompt_ids,
                                                "finish_reason": None}]})


def test_a_completion_with_token_ids_resumes_from_them() -> None:
    progress = Progress(_plan(max_tokens=10))
    body = json.loads(_plan().upstream_body() or b"{}")
    assert body["return_token_ids"] is True  # asked of the replica
    progress.absorb(_ids_chunk(" upon", [11], prompt_ids=[5, 6]))
    progress.absorb(_ids_chunk(" a", [12]))
    progress.absorb(_ids_chunk("", [13]))  # the start of a character, held back
    assert progress.tokens == 3
    progress.sent = 3  # the client had the three events
    progress.next_attempt()
    assert progress.carried == 2  # the held-back token is generated again
    resumed = json.loads(progress.resume_body())
    assert resumed["prompt"] == [5, 6, 11, 12]
    assert resumed["max_tokens"] == 8
    rewritten = progress.rewrite(_ids_chunk(" time", [14], prompt_ids=[5, 6, 11, 12]))
    assert rewritten is not None
    assert json.loads(rewritten[6:])["choices"][0]["prompt_token_ids"] is None


def test_a_token_id_prompt_without_reported_ids_cannot_resume() -> None:
    progress = Progress(_plan(prompt=[1, 2, 3]))
    progress.absorb(_chunk(" x"))
    progress.next_attempt()
    assert progress.stuck is not None
