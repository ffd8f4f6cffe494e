"""Fault injection: the knobs (`Faults`), the chaos picker and the rate-limit token bucket."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

CHAOS = ("429", "500", "502", "503", "truncated", "reset")
"""What a chaos pick can be: an error status, a half body or a reset connection."""


@dataclass
class Faults:
    """Fault-injection knobs, all off by default; change them at any time.

    Every-k-th counts and `fail_after_page` count from the start or the last `clear_log()`.
    """

    latency: float = 0.0
    """Seconds slept before answering each API or token request (admin ones are not delayed),
    like a real API's round trip. The sleep holds no lock, so concurrent requests wait in
    parallel, as they would on a real API."""
    rate_limit_every: int = 0
    """Every k-th request is answered 429 with `retry_after`."""
    retry_after: str | None = "1"
    """`Retry-After` sent with 429s (seconds or an HTTP date); None sends no header."""
    error_every: int = 0
    """Every k-th request is answered with `error_status`."""
    error_status: int = 500
    truncate_every: int = 0
    """Every k-th request, if it is a 200, gets half its JSON body (with a matching length)."""
    fail_after_page: int | None = None
    """After this many good pages, every request is answered with `fail_status`."""
    fail_status: int = 500
    html_errors: bool = False
    """Error bodies are a proxy's HTML page instead of Smartcar JSON."""
    chaos_rate: float = 0.0
    """Probability per request of a random 429/500/502/503, truncated body or reset."""
    chaos_seed: int = 0
    cursor_cycle: int | None = None
    """Pages after page k (k >= 2) hand back the cursor that led to the page before them, so
    paging loops A -> B -> A."""
    repeat_cursor: bool = False
    """Each page's cursor is the one the request sent."""
    force_status: int | None = None
    """Every request is answered with this status and a Smartcar error body."""
    rate_limit_bucket: int | None = None
    """A token bucket of this capacity: each request takes a token, an empty bucket gives 429
    with Retry-After = seconds until the next token."""
    rate_limit_refill_per_minute: float = 2.0
    token_status: int | None = None
    """The v3 token endpoint answers only with this status (an OAuth error body for a 4xx, a
    JSON:API error for a 429 or 5xx)."""
    v3_order: str = "desc"
    """v3 connections: "desc" (newest first, said in `meta.orderDirection`), "asc" (oldest
    first, said) or "unstated" (newest first, `meta` has no `orderBy`/`orderDirection`)."""
    v3_omit_links: bool = False
    """v3 lists have no `links` at all."""
    v3_next_elsewhere: str | None = None
    """v3 lists' `links.next`, where not null, is this absolute URL instead."""
    v3_total_offset: int = 0
    """v3 lists report `meta.totalCount` off by this much."""


def every(k: int, n: int) -> bool:
    """Whether the `n`-th request is an every-`k`-th one (never when `k` <= 0)."""
    return k > 0 and n % k == 0


class ChaosPicker:
    """Reproducible random faults: a generator seeded with `Faults.chaos_seed`."""

    def __init__(self) -> None:
        self._rng: random.Random | None = None
        self._seed = 0

    def reset(self) -> None:
        """Start the sequence over (from the seed) at the next pick."""
        self._rng = None

    def pick(self, faults: Faults) -> str | None:
        """Return this request's chaos fault (one of `CHAOS`), or None."""
        rate = faults.chaos_rate
        if rate <= 0:
            return None
        if self._rng is None or self._seed != faults.chaos_seed:
            self._seed = faults.chaos_seed
            self._rng = random.Random(self._seed)  # noqa: S311 -- reproducible faults
        if self._rng.random() >= rate:
            return None
        return self._rng.choice(CHAOS)


class TokenBucket:
    """The rate limit of `Faults.rate_limit_bucket`: full when created or resized."""

    def __init__(self) -> None:
        self._capacity: int | None = None
        self._tokens = 0.0
        self._time = 0.0

    def take(self, faults: Faults) -> float | None:
        """Take a token from the bucket, or return the seconds until one is available."""
        capacity = faults.rate_limit_bucket
        now = time.monotonic()
        if capacity != self._capacity:
            self._capacity, self._tokens, self._time = capacity, capacity or 0, now
        if capacity is None:
            return None
        per_second = faults.rate_limit_refill_per_minute / 60
        self._tokens = min(capacity, self._tokens + (now - self._time) * per_second)
        self._time = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / per_second if per_second > 0 else 3600.0


class FaultState:
    """What injected faults depend on, shared by every face so that they count together.

    Not thread-safe: the simulator serialises requests with its lock.
    """

    def __init__(self) -> None:
        self.seq = 0
        """Requests since the start or the last `reset()`."""
        self.pages_ok = 0
        """Good (200, whole) pages since then."""
        self.chaos = ChaosPicker()
        self.bucket = TokenBucket()
        """The one rate-limit bucket of every face."""

    def reset(self) -> None:
        """Restart the request and page counters and the chaos sequence."""
        self.seq = 0
        self.pages_ok = 0
        self.chaos.reset()

    def count(self) -> int:
        """Count one more request and return its number."""
        self.seq += 1
        return self.seq

    def failure(self, faults: Faults, chaos: str | None) -> tuple[int, str | None, str] | None:
        """Return this request's injected failure (see `injected_failure`), or None."""
        return injected_failure(faults, chaos, self.seq, self.pages_ok, self.bucket)

    def truncates(self, faults: Faults, chaos: str | None) -> bool:
        """Whether this request's 200 body is cut in half."""
        return chaos == "truncated" or every(faults.truncate_every, self.seq)


def injected_failure(
    faults: Faults, chaos: str | None, n: int, pages_ok: int, bucket: TokenBucket
) -> tuple[int, str | None, str] | None:
    """Pick the injected error status, Retry-After and fault name for a request.

    Args:
        faults: The knobs.
        chaos: This request's chaos pick.
        n: The request's number since the start or the last `clear_log()`.
        pages_ok: Good pages served since then.
        bucket: The rate-limit bucket; a token is taken only if nothing earlier failed.

    Returns:
        (status, Retry-After or None, fault name), or None for no injected error.
    """
    if faults.force_status is not None:
        return faults.force_status, None, "force_status"
    if chaos is not None and chaos.isdigit():
        return int(chaos), faults.retry_after if chaos == "429" else None, "chaos"
    if faults.fail_after_page is not None and pages_ok >= faults.fail_after_page:
        return faults.fail_status, None, "fail_after_page"
    if every(faults.rate_limit_every, n):
        return 429, faults.retry_after, "rate_limit_every"
    if every(faults.error_every, n):
        return faults.error_status, None, "error_every"
    wait = bucket.take(faults)
    return None if wait is None else (429, str(max(1, math.ceil(wait))), "rate_limit_bucket")
