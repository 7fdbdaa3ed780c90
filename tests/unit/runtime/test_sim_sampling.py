"""What the sim engine generates (kubeplex.runtime.sim.sampling): a continuation of its
context, stopped and shaped like vLLM's output."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeplex.runtime._limits import BadRequestBody
from kubeplex.runtime.sim.sampling import (
    MAX_LOGPROBS,
    VOCABULARY,
    Sampling,
    choice_logprobs,
    context_of,
    generate,
    parse_sampling,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(prompt=st.text(max_size=30), total=st.integers(1, 60), data=st.data())
def test_a_cut_generation_continues_exactly(prompt: str, total: int,
                                            data: st.DataObject) -> None:
    """Resuming from prompt + text so far gives the rest of the uncut text: what request
    migration relies on (no gap, no repeat)."""
    whole = generate(prompt, total, Sampling())
    cut = data.draw(st.integers(1, total))
    head = "".join(whole.pieces[:cut])
    rest = generate(prompt + head, total - cut, Sampling()) if cut < total else None
    assert head + (rest.text if rest else "") == whole.text
    assert whole.tokens == total and whole.finish_reason == "length"


def test_a_new_reply_starts_the_cycle_and_token_ids_continue() -> None:
    assert generate("", 3, Sampling()).text == "The quick brown"
    assert generate("what about the lazy", 2, Sampling()).text == " dog."
    assert generate(1, 2, Sampling()).token_ids == (2, 3)  # after token id 1 (" quick")


@pytest.mark.parametrize(("stop", "include", "text", "reason"), [
    ([" fox"], False, "The quick brown", " fox"),
    ([" fox"], True, "The quick brown fox", " fox"),
    (["ck br", "zzz"], False, "The qui", "ck br"),
    ("jumps", False, "The quick brown fox ", "jumps"),
])
def test_stop_strings_end_the_reply_like_vllm(stop: object, include: bool, text: str,
                                              reason: str) -> None:
    sampling = parse_sampling({"stop": stop, "include_stop_str_in_output": include}, False, 16)
    out = generate("", 16, sampling)
    assert (out.text, out.finish_reason, out.stop_reason) == (text, "stop", reason)
    assert out.tokens == len(out.pieces) < 16


def test_min_tokens_and_stop_token_ids() -> None:
    late = generate("", 16, parse_sampling({"stop": "The", "min_tokens": 3}, False, 16))
    assert late.tokens == 11 and late.text.endswith(".")  # the second "The" stops it
    by_id = generate("", 16, parse_sampling({"stop_token_ids": [3]}, False, 16))
    assert (by_id.text, by_id.stop_reason, by_id.tokens) == ("The quick brown", 3, 4)


@pytest.mark.parametrize(("body", "chat", "message"), [
    ({"n": 0}, False, "n must be an integer >= 1"),
    ({"n": "2"}, False, "n must be an integer"),
    ({"stop": 3}, False, "stop must be a string or a list"),
    ({"stop_token_ids": ["a"]}, False, "stop_token_ids must be a list of integers"),
    ({"min_tokens": 20}, False, "min_tokens must be less than or equal to max_tokens"),
    ({"logprobs": MAX_LOGPROBS + 1}, False, "logprobs must be an integer between"),
    ({"top_logprobs": 2}, True, "`logprobs` must be set to true"),
    ({"logprobs": True, "top_logprobs": 99}, True, "top_logprobs must be an integer"),
    ({"prompt_logprobs": 1}, False, "computes no prompt_logprobs"),
    ({"include_stop_str_in_output": "maybe"}, False, "must be a boolean"),
])
def test_what_vllm_refuses_is_refused(body: dict[str, object], chat: bool,
                                      message: str) -> None:
    with pytest.raises(BadRequestBody, match=message):
        parse_sampling(body, chat, 16)


def test_logprobs_have_vllms_shapes() -> None:
    out = generate("", 3, Sampling())
    completion = choice_logprobs(out, 1, 2, top=2, chat=False, offset=3)
    assert completion["tokens"] == [" quick", " brown"]
    assert completion["text_offset"] == [3, 9]
    assert completion["token_logprobs"] == [0.0, 0.0]
    assert [len(t) for t in completion["top_logprobs"]] == [2, 2]
    chat = choice_logprobs(out, 0, 1, top=0, chat=True, offset=0)
    assert chat == {"content": [{"token": "The", "logprob": 0.0, "bytes": list(b"The"),
                                 "top_logprobs": []}]}


def test_a_chat_continues_only_a_final_assistant_message() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}]
    assert context_of({"messages": messages, "continue_final_message": True}, True) == "The"
    assert context_of({"messages": messages}, True) == ""
    assert context_of({"prompt": "a lazy"}, False) == "a lazy"
    assert len(VOCABULARY) == len(set(VOCABULARY))
