"""Which replica serves a request: the routing policies (pure code: no I/O, no clock).

The gateway (:mod:`kubeplex.gateway`) and the trace replay (``kubeplex simulate routing``,
:mod:`kubeplex.runtime.sim.replay`) both run this code, so what the simulator measures is what
the gateway does (a serving pod's own router has one engine per model: no choice to make). A
:class:`Router` keeps, per replica, what the router itself knows: its requests in flight and
the KV tokens they reserve (prompt + ``max_tokens``), and an index of the prompt blocks it
recently sent there.

Policies (``spec.routing`` of a ModelService):

``least-loaded``
    the replica with the fewest requests in flight (ties: fewest reserved KV tokens).
``round-robin``
    replicas in turn.
``prefix-aware`` (default)
    prefix affinity balanced against load. Every replica's :class:`PrefixIndex` holds the
    chained block hashes (:mod:`kubeplex.runtime.prefix`) of the prompts routed there, in LRU
    order and bounded by the replica's KV capacity, like the engine's own prefix cache (vLLM
    evicts its free cached blocks LRU). Each replica is given the prompt tokens a new request
    would wait for there: the prefill still queued there (the uncached prompt tokens of its
    requests that have no output yet) plus the request's own uncached tokens, ``prompt -
    cached``, where ``cached`` is the leading run of its blocks the replica's index holds
    (KV-aware routing as in Dynamo's KV router: both terms in one unit, no weights to tune).
    The queued prefill drains while the router waits for first outputs: it is counted down at
    the prefill rate the router measures (the prompt tokens of about the last
    :data:`RATE_MEMORY` first outputs over the time a replica took for them: a ratio of
    averages, so a batch whose first outputs come out microseconds apart counts as one batch),
    so a replica half way through a long prompt is seen half way; but what was sent there
    while a step ran waits whole for that replica's next first output (an engine's step takes
    what waits when it starts), and nothing is counted down while its requests in flight
    reserve more KV cache than it has (some then wait for memory, which frees only as others
    finish, however fast it prefills).

    **Engine reports** (:meth:`Router.observe`, :mod:`kubeplex.runtime.kv_events`): where a
    replica's engine publishes its KV events (vLLM's ``BlockStored`` / ``BlockRemoved`` /
    ``AllBlocksCleared``, as llm-d's precise prefix scorer consumes them), they are applied
    to its index, which then holds what the engine caches (plus what was sent there and is
    not stored yet) instead of a guess; and where it reports its queue
    (:class:`~kubeplex.runtime.kv_events.EngineLoad`: uncached prompt tokens waiting, and
    when its running step ends), the queued prefill is that report (the step's remainder
    converted at the measured rate) plus what was sent there since, instead of the router's
    own count. The trace replay feeds both; the gateway feeds the queue reports a live sim
    engine streams (:mod:`kubeplex.gateway._load`), not KV events (docs/gateway.md says why).

    A replica is a candidate only while its load
    stays within a bound of the mean (*consistent hashing with bounded loads*, Mirrokni,
    Thorup and Zadimoghaddam, SODA 2018):
    ``in_flight + 1 <= ceil(LOAD_BOUND * (total in flight + 1) / replicas) + LOAD_SLACK``.
    The candidate with the least tokens to wait for wins (then the fewest in flight, then the
    least KV reserved). So a conversation's next turn, or the next request behind a shared system
    prompt or document, goes where its prefix is cached, unless the prefill queued there
    costs more than recomputing the prefix elsewhere; and a hot prefix spills to other
    replicas once its first replica carries more than its share (they then cache it too),
    instead of melting it.

In flight through the router is the engine's queue plus its running batch when the router is
the replica's only client (the gateway is, for the replicas it routes), and the reserved KV
tokens are the engine's KV usage under the sim's reservation (vLLM allocates as tokens come,
so it uses less); the router needs no scrape to see either. A replica that is new, or whose
engine restarted, starts with an empty index: a *cold cache*, as its engine's
(:mod:`kubeplex.autoscaler.cold_cache` says what that costs after a scale-up).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeplex.runtime.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EngineLoad,
    KVEvent,
)
from kubeplex.runtime.prefix import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    NO_BLOCKS,
    VLLM_BLOCK_SIZE,
    PromptBlocks,
    prompt_blocks,
    text_of,
)

__all__ = [
    "DEFAULT_INDEX_TOKENS",
    "DEFAULT_POLICY",
    "LOAD_BOUND",
    "LOAD_SLACK",
    "POLICIES",
    "RATE_MEMORY",
    "ROUTER_BLOCK_SIZE",
    "UNKNOWN_REQUEST",
    "Cause",
    "Choice",
    "Policy",
    "PrefixIndex",
    "Request",
    "Router",
    "Ticket",
    "request_of",
]


class Policy(enum.StrEnum):
    """A ModelService's ``spec.routing``."""

    PREFIX_AWARE = "prefix-aware"
    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"


DEFAULT_POLICY = Policy.PREFIX_AWARE
POLICIES = tuple(p.value for p in Policy)

#: The load bound of consistent hashing with bounded loads: no replica takes a request that
#: would put it above this multiple of the mean number in flight. 1.5 is the most unequal
#: share the issue tolerates (no replica above 1.5x its fair share of requests) and the top
#: of HAProxy's ``hash-balance-factor`` guidance (125-150). Within it, the queued-prefill
#: term balances the load that delays a first token; a tighter bound (1.25 before) turns
#: requests away from their cache to even out counts of mostly decoding requests, which
#: delay nobody's first token much.
LOAD_BOUND = 1.5
#: Requests in flight a replica may take beyond the bound: at low load the bound alone (a
#: mean below one) would send a conversation's next turn away from its cache whenever its
#: replica is still busy with anything, even with every other replica idle.
LOAD_SLACK = 1
#: Tokens per block of a text or token-id prompt in the router's index: four of vLLM's
#: blocks. A router needs no finer match (at most 63 tokens of a cached prefix go unseen) and
#: hashes a quarter as often: a 12,000-token prompt costs ~120 µs of CPU instead of ~330 µs
#: (docs/benchmarks.md, "Routing policy cost"). Requests that bring their own
#: ``block_hashes`` keep their ``block_size``.
ROUTER_BLOCK_SIZE = 4 * VLLM_BLOCK_SIZE
#: How many recent prefills the measured prefill rate averages over (exponential moving
#: averages of their tokens and seconds with weight ``1 / RATE_MEMORY``): enough to smooth
#: one odd batch, few enough to follow a change of load within a minute at a few requests per
#: second.
RATE_MEMORY = 20
#: Index size per replica when its KV capacity is unknown (a replica the cluster gateway
#: discovered): the KV cache of llama-3.1-8b on one H100-80GB at vLLM's default 0.9 memory
#: share, ~400k tokens (``kubeplex.placement.llm``). Too small an index forgets prefixes the
#: engine still holds (fewer hits); too large sends requests for prefixes it has evicted
#: (recomputed there, still within the load bound).
DEFAULT_INDEX_TOKENS = 400_000


class PrefixIndex:
    """The block hashes a router recently sent to one replica, LRU, bounded in tokens."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self.tokens = 0
        self._blocks: OrderedDict[int, int] = OrderedDict()  # hash -> tokens

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: PromptBlocks) -> int:
        """How many leading blocks of ``blocks`` the index holds."""
        held = self._blocks
        n = 0
        for h in blocks.hashes:
            if h not in held:
                break
            n += 1
        return n

    def add(self, blocks: PromptBlocks) -> None:
        """The replica is about to cache ``blocks``: most recent, oldest evicted past the
        capacity. The leading blocks end up most recent (they are shared the most)."""
        self.store(blocks.hashes, blocks.block_size)

    def store(self, hashes: Sequence[int], block_size: int) -> None:
        """Blocks ``hashes`` (prompt order) are cached: :meth:`add`, or a ``BlockStored``
        event."""
        held = self._blocks
        for h in reversed(hashes):
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = block_size
                self.tokens += block_size
        while self.tokens > self.capacity and held:
            _, tokens = held.popitem(last=False)
            self.tokens -= tokens

    def remove(self, hashes: Sequence[int]) -> None:
        """Blocks ``hashes`` were evicted (a ``BlockRemoved`` event)."""
        for h in hashes:
            tokens = self._blocks.pop(h, None)
            if tokens is not None:
                self.tokens -= tokens

    def clear(self) -> None:
        """The replica's cache was dropped (``AllBlocksCleared``)."""
        self._blocks.clear()
        self.tokens = 0


class Cause(enum.Enum):
    """Why a replica was chosen (typed; :attr:`Choice.reason` says it for people)."""

    ONLY_REPLICA = "only-replica"
    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    PREFIX = "prefix"
    LESS_QUEUED = "less-queued"
    NO_PREFIX = "no-prefix"


@dataclass(frozen=True)
class Choice:
    """The replica a request goes to (its index in the candidates), why, and how many of its
    prompt tokens the router expects cached there."""

    index: int
    cause: Cause
    reason: str
    cached_tokens: int = 0


@dataclass(frozen=True)
class Request:
    """What the router needs of a request: its prompt's blocks and token counts."""

    blocks: PromptBlocks
    prompt_tokens: int
    max_tokens: int

    @property
    def kv_tokens(self) -> int:
        """KV cache the engine reserves for it (prompt + max_tokens)."""
        return self.prompt_tokens + self.max_tokens

    @property
    def cacheable_blocks(self) -> int:
        """Leading blocks a cache hit may cover: vLLM recomputes the last prompt token."""
        return max(0, self.prompt_tokens - 1) // self.blocks.block_size


#: A request the router knows nothing of (no prefix, one prompt token).
UNKNOWN_REQUEST = Request(NO_BLOCKS, 1, DEFAULT_MAX_TOKENS)


@dataclass
class _Replica:
    index: PrefixIndex
    in_flight: int = 0
    reserved: int = 0  # KV tokens (prompt + max_tokens) of the requests in flight
    prefill: int = 0  # uncached prompt tokens of the requests with no output yet
    since: float = 0.0  # when its prefill last made known progress (or started)
    later: int = 0  # of ``prefill``, what was sent while a step ran: waits for the next
    load: EngineLoad | None = None  # the engine's last report of its queue
    sent_since_load: int = 0  # uncached prompt tokens sent here after that report

    def cached(self, request: Request) -> int:
        """Prompt tokens of ``request`` the index says are cached here."""
        blocks = min(self.index.match(request.blocks), request.cacheable_blocks)
        return blocks * request.blocks.block_size

    def queued(self, rate: float | None, now: float) -> float:
        """Prefill tokens a request sent here at ``now`` waits for: with an engine report,
        its waiting prefill plus the rest of its running step (at ``rate``) plus what was sent
        here since; else the router's own count, counted down at ``rate`` since ``since``
        unless the replica is short of KV cache (see the module doc)."""
        load = self.load
        if load is not None:
            step = 0.0 if rate is None else rate * max(0.0, load.step_ends_at - now)
            return load.prefill_tokens + step + self.sent_since_load
        if rate is None or self.prefill <= 0 or self.reserved > self.index.capacity:
            return float(self.prefill)
        later = min(self.later, self.prefill)
        return later + max(0.0, self.prefill - later - rate * max(0.0, now - self.since))


@dataclass(eq=False)
class Ticket:
    """One request in flight, as the router accounts for it (:meth:`Router.sent`)."""

    key: Hashable
    kv_tokens: int
    prefill_tokens: int
    started: bool = False
    finished: bool = False


class Router:
    """One route's policy and what it knows of each replica (see the module doc).

    Replicas are named by any hashable key (the gateway's replica objects, the replay's
    numbers). :meth:`choose` picks among the given candidates; the caller then reports
    :meth:`sent` (whichever replica it sent the request to), :meth:`started` when the first
    output arrives, and :meth:`done` when the request is over.
    """

    def __init__(self, policy: Policy | str = DEFAULT_POLICY, *,
                 load_bound: float = LOAD_BOUND) -> None:
        self.policy = Policy(policy)
        self.load_bound = load_bound
        self._replicas: dict[Hashable, _Replica] = {}
        self._turn = 0
        # Moving averages of the prefill tokens and the seconds between first outputs (a
        # plain mean over the first RATE_MEMORY of them).
        self._rate_tokens = 0.0
        self._rate_seconds = 0.0
        self._rate_samples = 0

    # ---- replicas ----------------------------------------------------------------------
    def add(self, key: Hashable, capacity_tokens: int | None = None) -> None:
        """A replica to route to, with an empty (cold) index of ``capacity_tokens``."""
        self._replicas[key] = _Replica(PrefixIndex(capacity_tokens or DEFAULT_INDEX_TOKENS))

    def remove(self, key: Hashable) -> None:
        self._replicas.pop(key, None)

    def _state(self, key: Hashable) -> _Replica:
        state = self._replicas.get(key)
        if state is None:
            state = self._replicas[key] = _Replica(PrefixIndex(DEFAULT_INDEX_TOKENS))
        return state

    @property
    def uses_prefixes(self) -> bool:
        """Whether the policy looks at the prompt's blocks (else they need not be hashed)."""
        return self.policy is Policy.PREFIX_AWARE

    def in_flight(self, key: Hashable) -> int:
        return self._state(key).in_flight

    def index(self, key: Hashable) -> PrefixIndex:
        return self._state(key).index

    # ---- the decision --------------------------------------------------------------------
    def choose(self, candidates: Sequence[Hashable], request: Request, now: float) -> Choice:
        """The candidate to send ``request`` to at ``now`` (seconds, any monotonic clock);
        ``candidates`` must not be empty."""
        if not candidates:
            raise ValueError("no replica to choose from")
        if len(candidates) == 1:
            return Choice(0, Cause.ONLY_REPLICA, "the only ready replica")
        states = [self._state(k) for k in candidates]
        if self.policy is Policy.ROUND_ROBIN:
            self._turn = (self._turn + 1) % len(candidates)
            return Choice(self._turn, Cause.ROUND_ROBIN, "next in turn")
        least = min(range(len(states)), key=lambda i: (states[i].in_flight, states[i].reserved))
        if self.policy is Policy.LEAST_LOADED:
            return Choice(least, Cause.LEAST_LOADED,
                          f"fewest requests in flight ({states[least].in_flight})")
        return self._prefix_aware(states, request, least, now)

    def _prefix_aware(self, states: list[_Replica], request: Request, least: int,
                      now: float) -> Choice:
        cached = [s.cached(request) for s in states]
        wait = [s.queued(self.prefill_rate, now) + request.prompt_tokens - c
                for s, c in zip(states, cached, strict=True)]
        mean = (sum(s.in_flight for s in states) + 1) / len(states)
        cap = math.ceil(self.load_bound * mean) + LOAD_SLACK
        allowed = [i for i, s in enumerate(states) if s.in_flight + 1 <= cap] or [least]
        pick = min(allowed, key=lambda i: (wait[i], states[i].in_flight, states[i].reserved))
        most = max(cached)
        here = cached[pick]
        if most == 0:
            return Choice(pick, Cause.NO_PREFIX, "no replica holds a prefix of it: the least "
                          f"prefill to wait for ({wait[pick]:.0f} tokens)")
        if here == most:
            return Choice(pick, Cause.PREFIX, f"{here} of its {request.prompt_tokens} prompt "
                                              "tokens cached there", here)
        return Choice(pick, Cause.LESS_QUEUED,
                      f"a replica caching {most} of its tokens has more prefill queued or is "
                      f"above {self.load_bound:g}x the mean load; {here} cached here", here)

    # ---- bookkeeping -----------------------------------------------------------------------
    def sent(self, key: Hashable, request: Request, now: float) -> Ticket:
        """``request`` went to ``key`` at ``now``: it is in flight there with its uncached
        prompt to prefill, and (prefix-aware) its blocks will be cached there."""
        state = self._state(key)
        ticket = Ticket(key, request.kv_tokens, request.prompt_tokens - state.cached(request))
        if state.prefill <= 0:
            state.since = now  # an idle replica starts on it now
        else:
            state.later += ticket.prefill_tokens
        state.in_flight += 1
        state.reserved += ticket.kv_tokens
        state.prefill += ticket.prefill_tokens
        state.sent_since_load += ticket.prefill_tokens
        if self.policy is Policy.PREFIX_AWARE and request.blocks.hashes:
            state.index.add(request.blocks)
        return ticket

    def observe(self, key: Hashable, events: Iterable[KVEvent] = (),
                load: EngineLoad | None = None) -> None:
        """What replica ``key``'s engine reported (:mod:`kubeplex.runtime.kv_events`): its KV
        events, applied to its index in order (which then holds what the engine caches, plus
        what was sent there and not stored yet), and its queue, which from now on replaces
        the router's own count of the prefill queued there."""
        state = self._state(key)
        for event in events:
            if isinstance(event, BlockStored):
                state.index.store(event.block_hashes, event.block_size)
            elif isinstance(event, BlockRemoved):
                state.index.remove(event.block_hashes)
            elif isinstance(event, AllBlocksCleared):
                state.index.clear()
        if load is not None:
            state.load = load
            state.sent_since_load = 0

    def forget_load(self, key: Hashable) -> None:
        """Replica ``key``'s engine stopped reporting its queue: back to the router's own
        count (kept all along)."""
        state = self._state(key)
        state.load = None
        state.sent_since_load = 0

    @property
    def prefill_rate(self) -> float | None:
        """The measured prefill rate: prompt tokens per second of a replica's progress, over
        about the last :data:`RATE_MEMORY` first outputs (None until one took time)."""
        if self._rate_seconds <= 0:
            return None
        return self._rate_tokens / self._rate_seconds

    def started(self, ticket: Ticket, now: float) -> None:
        """The request's first output arrived at ``now``: its prefill is over, and its tokens
        and the time since the replica's last known progress measure the prefill rate. The
        rate is a ratio of averages (tokens over seconds), not an average of ratios: the
        requests of one batch come out together, the first with all the batch's time, the
        others with almost none, and only their sum is the batch's rate."""
        state = self._replicas.get(ticket.key)
        if not ticket.started and state is not None:
            state.prefill -= ticket.prefill_tokens
            self._rate_samples += 1
            weight = 1 / min(self._rate_samples, RATE_MEMORY)
            self._rate_tokens += (ticket.prefill_tokens - self._rate_tokens) * weight
            self._rate_seconds += (max(0.0, now - state.since) - self._rate_seconds) * weight
            state.since = now
            state.later = 0  # a new step starts and takes what waited
        ticket.started = True

    def done(self, ticket: Ticket, now: float) -> None:
        """A request is over (answered, failed or cut) at ``now``. One that never reported a
        first output (not streamed) leaves the queued prefill now, without a rate sample:
        its prefill ended at some unknown time before."""
        state = self._replicas.get(ticket.key)
        if not ticket.started and state is not None:
            state.prefill -= ticket.prefill_tokens
        ticket.started = True
        if state is not None and not ticket.finished:
            state.in_flight -= 1
            state.reserved -= ticket.kv_tokens
        ticket.finished = True


def request_of(body: Mapping[str, Any], chat: bool, block_size: int = ROUTER_BLOCK_SIZE,
               hashed: bool = True) -> Request:
    """What the router needs of an OpenAI request body (never raises: a malformed body is
    routed as one with no prefix, and the engine answers it with its own error). Without
    ``hashed`` the prompt is not cut into blocks (policies that ignore prefixes).

    Prompt tokens: the body's ``prompt_tokens`` (the sim's extension), else the length of a
    token-id prompt, else the text's characters / :data:`CHARS_PER_TOKEN`; output tokens:
    ``max_tokens`` (``max_completion_tokens`` for chat), else :data:`DEFAULT_MAX_TOKENS`.
    """
    try:
        blocks = prompt_blocks(body, chat, block_size) if hashed else NO_BLOCKS
    except ValueError:
        blocks = NO_BLOCKS
    hint = body.get("prompt_tokens")
    prompt = body.get("prompt")
    if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0:
        tokens = hint
    elif not chat and isinstance(prompt, list):
        tokens = len(prompt)
    else:
        text = text_of(body, chat) or ""
        tokens = -(-len(text) // CHARS_PER_TOKEN)
    tokens = max(tokens, blocks.tokens, 1)
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    out = body.get(key)
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        out = DEFAULT_MAX_TOKENS
    return Request(blocks, tokens, out)
