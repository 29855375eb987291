"""What a queue did minute by minute: runs, failed runs and run-duration quantiles, for the charts.

The counts are kept by the store in the same atomic step as the metric counters (the Redis store:
`flush_history` in lib.lua), for the last rules.HISTORY_MINUTES minutes; this module only reads
them. Quantiles come from the histogram buckets as Prometheus' histogram_quantile estimates them:
linear within the bucket that holds the rank, so they are as coarse as DURATION_BUCKETS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.workers.models import JSON
from backend.workers.rules import DURATION_BUCKETS

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class MinuteStats:
    """One minute of one queue. `buckets`: runs per DURATION_BUCKETS slot, then one for +Inf."""

    at: float  # the minute's start, epoch seconds on the store's clock
    processed: int = 0  # runs that ended (done, retry, failed, lease expired); cancelled runs are not
    failed: int = 0  # of those, the runs that raised or whose lease expired
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the observed run durations (seconds), or None without observations."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank, seen = q * total, 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                if index == len(DURATION_BUCKETS):  # +Inf: say the highest finite bound, as Prometheus does
                    return DURATION_BUCKETS[-1]
                low = DURATION_BUCKETS[index - 1] if index else 0.0
                high = DURATION_BUCKETS[index]
                return low + (high - low) * (rank - seen) / count
            seen += count
        return DURATION_BUCKETS[-1]

    def to_json(self) -> dict[str, JSON]:
        observed = sum(self.buckets)
        out: dict[str, JSON] = {
            "at": self.at,
            "processed": self.processed,
            "failed": self.failed,
            "mean": self.duration_sum / observed if observed else None,
        }
        for q in QUANTILES:
            out[f"p{round(q * 100)}"] = self.quantile(q)
        return out
