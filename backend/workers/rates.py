"""Rate limits: the one syntax ("100/s", "5/m", "10/30s") and its check, for handlers, queues and jobs.

A rate "N/<k><unit>" allows N starts per k units (unit s, m, h or d; k defaults to 1). The claim
script enforces it as an evenly spaced schedule (GCRA without a burst): starts of one limit key
are at least `period / N` apart on the Redis clock, so no window of one period ever holds more
than N of them. Lua reads the same canonical text (`rate_interval` in lib.lua), so the
syntax is checked here, before anything reaches Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_COUNT = 1_000_000_000
MAX_MULTIPLIER = 1_000_000
_RATE_RE = re.compile(r"^([0-9]{1,10})/([0-9]{0,7})([smhd])$")


class InvalidRateError(ValueError):
    """A rate that is not "N/<k><unit>" with sane bounds."""


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    multiplier: int
    unit: str

    @property
    def period(self) -> float:
        """Seconds the `count` starts are spread over."""
        return float(self.multiplier * UNIT_SECONDS[self.unit])

    @property
    def interval_us(self) -> float:
        """Microseconds between two starts (what the claim script spaces them by)."""
        return self.period * 1e6 / self.count

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{'' if self.multiplier == 1 else self.multiplier}{self.unit}"


def parse_rate(text: object) -> Rate:
    """"100/s" -> Rate(100, 1, "s"). Raises InvalidRateError naming what is wrong."""
    if not isinstance(text, str):
        raise InvalidRateError(f"a rate is a string like '100/s', not {type(text).__name__}")
    match = _RATE_RE.match(text.strip().lower())
    if match is None:
        raise InvalidRateError(f"rate {text[:40]!r} is not N/<unit> or N/<k><unit> (unit s/m/h/d): 100/s")
    count, multiplier = int(match[1]), int(match[2] or 1)
    if not 1 <= count <= MAX_COUNT:
        raise InvalidRateError(f"a rate's count must be 1..{MAX_COUNT}")
    if not 1 <= multiplier <= MAX_MULTIPLIER:
        raise InvalidRateError(f"a rate's period multiplier must be 1..{MAX_MULTIPLIER}")
    rate = Rate(count, multiplier, match[3])
    if rate.interval_us < 1:
        raise InvalidRateError("a rate may allow at most one start per microsecond")
    return rate


def canonical_rate(text: object) -> str:
    """The checked, canonical text of a rate (what is stored in Redis)."""
    return str(parse_rate(text))
