"""The request bounds every kubeplex HTTP surface shares (kubeplex.runtime._limits)."""

from __future__ import annotations

import json

import pytest

from kubeplex.runtime._limits import (
    MAX_JSON_DEPTH,
    BadRequestBody,
    as_bool,
    check_depth,
    parse_json,
    parse_request,
    request_id,
)


def _nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


@pytest.mark.parametrize("body", [
    _nested(MAX_JSON_DEPTH), b'{"a":' * (MAX_JSON_DEPTH - 1) + b"[]" + b"}" * (MAX_JSON_DEPTH - 1),
    json.dumps({"prompt": "[" * 5000 + '\\"{' * 100}).encode(),  # brackets inside strings
    json.dumps(["\\", "\"", "[[["] * 40).encode(),  # escapes do not end strings
    b"[" + b"[]," * 100_000 + b"[]]",  # wide, not deep
])
def test_bodies_within_the_depth_limit_pass(body: bytes) -> None:
    check_depth(body)
    parse_json(body)


@pytest.mark.parametrize("body", [
    _nested(MAX_JSON_DEPTH + 1), _nested(100_000), b"[" * 100_000, b"{" * 70,
    b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
    b"[" + b"[]," * 10 + _nested(MAX_JSON_DEPTH) + b"]",
])
def test_deeper_bodies_are_refused_before_parsing(body: bytes) -> None:
    with pytest.raises(BadRequestBody, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        check_depth(body)


@pytest.mark.parametrize(("body", "param", "message"), [
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object, got list"),
    (b'{"prompt": "x"}', "model", "has no 'model'"),
    (b'{"model": null}', "model", "has no 'model'"),
    (b'{"model": 3}', "model", "non-empty string, got int"),
    (b'{"model": ""}', "model", "non-empty string"),
])
def test_openai_bodies_without_a_model_are_400_naming_it(body: bytes, param: str | None,
                                                         message: str) -> None:
    with pytest.raises(BadRequestBody, match=message) as err:
        parse_request(body)
    assert err.value.param == param
    assert err.value.http_status == 400


def test_a_request_names_its_model() -> None:
    parsed = parse_request(b'{"model": "m", "prompt": "x"}')
    assert parsed.model == "m" and parsed.fields["prompt"] == "x"


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), (True, True), (False, False), (1, True), (0, False), ("false", False),
    ("False", False), ("0", False), ("no", False), ("off", False), ("true", True),
    ("yes", True), ("on", True), (" 1 ", True),
])
def test_booleans_are_read_like_vllm_reads_them(value: object, expected: bool) -> None:
    assert as_bool(value, "stream") is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, [], {}])
def test_other_booleans_are_refused(value: object) -> None:
    with pytest.raises(BadRequestBody, match="'stream' must be a boolean") as err:
        as_bool(value, "stream")
    assert err.value.param == "stream"


@pytest.mark.parametrize(("given", "kept"), [
    ("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("caf\u00e9", False),
    ("a b", False), ("", False), ("\udcff", False),
])
def test_request_ids_are_kept_only_when_short_printable_ascii(given: str, kept: bool) -> None:
    chosen = request_id({"X-Request-Id": given})
    assert (chosen == given) is kept
    assert chosen.isascii() and chosen.isprintable()
