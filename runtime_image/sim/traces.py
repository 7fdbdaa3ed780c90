"""Prefix-sharing request traces: reading them, and generating some of other shapes.

Formats (:func:`read_trace`):

* **Mooncake JSONL** (the FAST'25 trace release, ``../shared/traces/``): one object a line
  with ``timestamp`` (ms from the start), ``input_length``, ``output_length`` and ``hash_ids``
  (one id per ``block_size``-token block of the prompt, 512 in Mooncake's traces; equal ids at
  one position mean an equal prefix). An optional ``block_size`` key overrides it per line.
* **CSV** with the header ``arrival_s,prompt_tokens,output_tokens[,hash_ids]`` (the
  autoscaler's trace format plus space-separated block ids; without them nothing is shared).

:func:`generate` writes Mooncake-format traces of other shapes (seeded, so tests and
benchmarks can replay them): ``chat`` (multi-turn conversations: every turn repeats the
conversation so far behind one of a few system prompts), ``system-prompts`` (single turns
behind a few long system prompts of Zipf popularity: a hot prefix), ``documents`` (questions
about shared documents of Zipf popularity, RAG-style) and ``agents`` (tool-calling loops:
long, fast-growing sessions whose next step arrives within seconds). Arrivals are a Gamma renewal
process (``cv`` 1: Poisson; larger: burstier), token counts log-normal.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeplex.runtime.errors import TraceFormatError
from kubeplex.runtime.prefix import PromptBlocks, chain
from kubeplex.runtime.sim.replay import TraceRequest

__all__ = ["MOONCAKE_BLOCK_SIZE", "SHAPES", "generate", "read_trace", "write_jsonl"]

#: Tokens per ``hash_ids`` entry in Mooncake's released traces (their README).
MOONCAKE_BLOCK_SIZE = 512
CSV_HEADER = ("arrival_s", "prompt_tokens", "output_tokens")
SHAPES = ("chat", "system-prompts", "documents", "agents")
#: Log-normal sigma of generated token counts (a long right tail, like chat traffic).
TOKEN_SIGMA = 0.6
#: Zipf exponent of prompt/document popularity (web and chat popularity measure ~0.8-1.2).
ZIPF_S = 1.0


def _request(where: str, arrival: object, prompt: object, output: object, ids: object,
             block_size: object) -> TraceRequest:
    try:
        arrival_s, prompt_tokens, output_tokens = float(str(arrival)), int(str(prompt)), \
            int(str(output))
    except ValueError as exc:
        raise TraceFormatError(f"{where}: arrival, prompt and output lengths must be numbers "
                               f"({exc})") from exc
    if not math.isfinite(arrival_s) or arrival_s < 0 or prompt_tokens < 1 or output_tokens < 1:
        raise TraceFormatError(f"{where}: the arrival must be >= 0 and the prompt and output "
                               "lengths >= 1")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise TraceFormatError(f"{where}: block_size must be a positive integer, got "
                               f"{block_size!r}")
    if not isinstance(ids, list) or not all(isinstance(i, int | str) and not isinstance(i, bool)
                                            for i in ids):
        raise TraceFormatError(f"{where}: hash_ids must be a list of block ids")
    return TraceRequest(arrival_s, prompt_tokens, output_tokens,
                        PromptBlocks(chain(ids), block_size))


def _jsonl(text: str, where: str, block_size: int) -> list[TraceRequest]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TraceFormatError(f"{where}:{n}: not a JSON object ({exc})") from exc
        if not isinstance(row, dict):
            raise TraceFormatError(f"{where}:{n}: not a JSON object")
        missing = [k for k in ("timestamp", "input_length", "output_length") if k not in row]
        if missing:
            raise TraceFormatError(f"{where}:{n}: missing {', '.join(missing)} (a Mooncake "
                                   "line has timestamp, input_length, output_length, hash_ids)")
        timestamp = row["timestamp"]
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise TraceFormatError(f"{where}:{n}: timestamp must be a number (ms)")
        out.append(_request(f"{where}:{n}", timestamp / 1000, row["input_length"],
                            row["output_length"], row.get("hash_ids", []),
                            row.get("block_size", block_size)))
    return out


def _csv(text: str, where: str, block_size: int) -> list[TraceRequest]:
    rows = list(csv.reader(io.StringIO(text)))
    header = tuple(cell.strip() for cell in rows[0])
    if header not in (CSV_HEADER, (*CSV_HEADER, "hash_ids")):
        raise TraceFormatError(f"{where}: header is {','.join(header)!r}, expected "
                               f"{','.join(CSV_HEADER)}[,hash_ids]")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            raise TraceFormatError(f"{where}:{n}: expected {len(header)} columns")
        ids: list[int | str] = [int(i) if i.lstrip("-").isdigit() else i
                                for i in (row[3].split() if len(row) > 3 else ())]
        out.append(_request(f"{where}:{n}", row[0], row[1], row[2], ids, block_size))
    return out


def read_trace(path: Path, block_size: int = MOONCAKE_BLOCK_SIZE) -> list[TraceRequest]:
    """Read a Mooncake JSONL or CSV trace (see the module doc). Bad content raises
    :class:`~kubeplex.runtime.errors.TraceFormatError` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceFormatError(f"cannot read trace {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{path}: not a text file ({exc.reason})") from exc
    where = str(path)
    first = text.lstrip()[:1]
    if not first:
        raise TraceFormatError(f"{where}: empty trace")
    requests = _jsonl(text, where, block_size) if first == "{" else _csv(text, where, block_size)
    if not requests:
        raise TraceFormatError(f"{where}: the trace has no requests")
    for a, b in itertools.pairwise(requests):
        if b.arrival_s < a.arrival_s:
            raise TraceFormatError(f"{where}: arrivals must be ascending ({b.arrival_s:g} s "
                                   f"after {a.arrival_s:g} s); sort the file")
    return requests


def write_jsonl(rows: Sequence[dict[str, Any]]) -> str:
    """Mooncake-format lines of generated ``rows``."""
    return "".join(json.dumps(row, separators=(", ", ": ")) + "\n" for row in rows)


# ---- generators ------------------------------------------------------------------------------

class _Draw:
    """The seeded random draws the shapes share."""

    def __init__(self, seed: int, cv: float) -> None:
        self.rng = random.Random(seed)
        self.cv = cv

    def tokens(self, mean: float) -> int:
        mu = math.log(mean) - TOKEN_SIGMA**2 / 2
        return max(1, round(self.rng.lognormvariate(mu, TOKEN_SIGMA)))

    def gaps(self, rate: float) -> Iterator[float]:
        """Gamma inter-arrival gaps with mean ``1/rate`` and coefficient of variation cv."""
        shape = 1 / self.cv**2
        while True:
            yield self.rng.gammavariate(shape, 1 / (rate * shape))

    def zipf(self, n: int) -> int:
        weights = [1 / (k + 1) ** ZIPF_S for k in range(n)]
        return self.rng.choices(range(n), weights)[0]


def _hash_ids(segments: Sequence[tuple[str, int]], block_size: int) -> list[str]:
    """Block ids of a prompt made of (content id, tokens) segments: a block's id names the
    segment slices it holds, so equal leading segments give equal leading ids."""
    ids: list[str] = []
    current: list[str] = []
    room = block_size
    for name, length in segments:
        start = 0
        while start < length:
            take = min(room, length - start)
            current.append(f"{name}[{start}:{start + take}]")
            start += take
            room -= take
            if room == 0:
                ids.append("|".join(current))
                current, room = [], block_size
    if current:
        ids.append("|".join(current))
    return ids


def _row(t: float, segments: Sequence[tuple[str, int]], output: int,
         block_size: int) -> dict[str, Any]:
    prompt = sum(length for _, length in segments)
    return {"timestamp": round(t * 1000, 3), "input_length": prompt, "output_length": output,
            "hash_ids": _hash_ids(segments, block_size)}


def generate(shape: str, *, rate: float, duration_s: float, seed: int = 1, cv: float = 1.0,
             block_size: int = MOONCAKE_BLOCK_SIZE) -> list[dict[str, Any]]:
    """A trace of ``shape`` (see the module doc) at ``rate`` requests/s for ``duration_s``, as
    Mooncake-format rows (arrivals ascending). Block ids are strings naming their content."""
    if shape not in SHAPES:
        raise TraceFormatError(f"unknown trace shape {shape!r}; known: {', '.join(SHAPES)}")
    if not rate > 0 or not duration_s > 0 or not cv > 0:
        raise TraceFormatError("rate, duration and cv must be > 0")
    draw = _Draw(seed, cv)
    rows: list[dict[str, Any]] = []
    if shape in ("chat", "agents"):
        _sessions(draw, CHAT if shape == "chat" else AGENTS, rate, duration_s, block_size, rows)
    else:
        prefixes = 10 if shape == "system-prompts" else 200  # how many shared prefixes
        mean_prefix = 3000 if shape == "system-prompts" else 6000  # their tokens
        mean_query = 400 if shape == "system-prompts" else 100
        lengths = [draw.tokens(mean_prefix) for _ in range(prefixes)]
        t = 0.0
        for n, gap in enumerate(draw.gaps(rate)):
            t += gap
            if t > duration_s:
                break
            k = draw.zipf(prefixes)
            segments = [(f"prefix{k}", lengths[k]), (f"query{n}", draw.tokens(mean_query))]
            rows.append(_row(t, segments, draw.tokens(200), block_size))
    rows.sort(key=lambda r: r["timestamp"])
    return rows


@dataclass(frozen=True)
class _Sessions:
    """A session shape: ``systems`` shared system prompts (mean ``system_tokens``, Zipf
    popularity), sessions of ``turns`` turns on average (geometric), each turn appending a
    user message (or tool output) of mean ``user`` tokens and repeating the whole session so
    far, the answer (mean ``answer`` tokens) appended after it, ``think_s`` seconds between
    turns on average (exponential)."""

    systems: int
    system_tokens: float
    turns: float
    user: float
    answer: float
    think_s: float


#: Chat: people typing, ~20 s between turns.
CHAT = _Sessions(systems=8, system_tokens=1500, turns=5, user=300, answer=250, think_s=20.0)
#: Agents: tool-calling loops behind a few long tool-definition prompts; every step appends a
#: tool's output (a file, a search result) and comes back within seconds, often while the
#: previous step's replica is still busy; contexts grow to tens of thousands of tokens.
AGENTS = _Sessions(systems=4, system_tokens=4000, turns=8, user=1500, answer=150, think_s=2.0)


def _sessions(draw: _Draw, shape: _Sessions, rate: float, duration_s: float, block_size: int,
              rows: list[dict[str, Any]]) -> None:
    systems = [draw.tokens(shape.system_tokens) for _ in range(shape.systems)]
    t = 0.0
    for n, gap in enumerate(draw.gaps(rate / shape.turns)):  # sessions start
        t += gap
        if t > duration_s:
            return
        k = draw.zipf(shape.systems)
        history: list[tuple[str, int]] = [(f"system{k}", systems[k])]
        at = t
        while at <= duration_s:
            history.append((f"c{n}user{len(history)}", draw.tokens(shape.user)))
            answer = draw.tokens(shape.answer)
            rows.append(_row(at, history, answer, block_size))
            history.append((f"c{n}answer{len(history)}", answer))
            if draw.rng.random() < 1 / shape.turns:
                break
            at += draw.rng.expovariate(1 / shape.think_s)
