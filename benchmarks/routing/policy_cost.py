"""CPU the routing policy costs the gateway per request, by prompt length and block size.

What the gateway does per request beyond forwarding it: parse the body (it did that before
too, for ``model``), cut and hash the prompt (:func:`kubeplex.runtime.routing.request_of`),
choose among 4 replicas and account for the request (sent, done). Process CPU time, best of
5 repeats (the machine is shared; the minimum is the cost without interference).

    .venv/bin/python benchmarks/routing/policy_cost.py
"""

from __future__ import annotations

import json
import random
import sys
import time

from kubeplex.runtime.prefix import VLLM_BLOCK_SIZE
from kubeplex.runtime.routing import ROUTER_BLOCK_SIZE, Policy, Router, request_of

REPLICAS = 4
REPEATS = 5
#: Prompt lengths in characters (4 a token): a chat turn, a long system prompt, Mooncake's
#: mean prompt (12,000 tokens) and its longest (126,000).
LENGTHS = (400, 4_000, 48_000, 500_000)


def cost_us(policy: Policy, chars: int, block_size: int) -> float:
    """Best-of-repeats CPU microseconds per request."""
    rng = random.Random(chars)
    raw = json.dumps({"model": "m", "max_tokens": 16,
                      "prompt": "".join(rng.choice("abcdefgh ") for _ in range(chars))}).encode()
    n = max(20, 200_000 // chars)
    best = float("inf")
    for _ in range(REPEATS):
        router = Router(policy)
        for k in range(REPLICAS):
            router.add(k, 400_000)
        start = time.process_time()
        for i in range(n):
            shape = request_of(json.loads(raw), chat=False, block_size=block_size,
                               hashed=router.uses_prefixes)
            choice = router.choose(range(REPLICAS), shape, float(i))
            router.done(router.sent(choice.index, shape, float(i)), float(i))
        best = min(best, (time.process_time() - start) / n)
    return 1e6 * best


def main() -> int:
    print("| prompt (characters) | least-loaded | prefix-aware, 64-token blocks (the gateway's) "
          "| prefix-aware, 16-token blocks (vLLM's) |")
    print("|---|---|---|---|")
    for chars in LENGTHS:
        print(f"| {chars:,} | {cost_us(Policy.LEAST_LOADED, chars, ROUTER_BLOCK_SIZE):.0f} µs | "
              f"{cost_us(Policy.PREFIX_AWARE, chars, ROUTER_BLOCK_SIZE):.0f} µs | "
              f"{cost_us(Policy.PREFIX_AWARE, chars, VLLM_BLOCK_SIZE):.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
