"""Periodic jobs: cron and interval schedules, and the leaderless scheduler every worker runs.

Each fire time becomes one job whose id is derived from (schedule, fire time), so
when every worker enqueues the same fire time the store's id dedup keeps exactly
one: no leader to lose, no duplicate. Fire times are computed on the store's
clock (Redis TIME), never the worker's.

Missed fire times (every worker was down): only the most recent missed fire time
is enqueued, once, when a scheduler next runs, provided it is younger than the
catch-up window (default: the job retention, since an older fire time's job
record may be gone and could no longer dedup). Older missed ones are skipped.
"""

from __future__ import annotations

import calendar
import re
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from backend.workers.models import JSON, JobSpec, ScheduleInfo
from backend.workers.rules import DEFAULT_QUEUE

_FIELDS = (
    ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7),
)
_NAMES = {
    3: {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m},
    4: {d.lower(): (i + 1) % 7 for i, d in enumerate(calendar.day_abbr)},
}
_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_SEARCH_DAYS = 366 * 5  # a cron that matches no day within five years never fires (e.g. 30 Feb)
_EVERY_RE = re.compile(r"^every\s+(\d+)s$")


class ScheduleError(ValueError):
    """A cron expression or schedule that cannot be used."""


def _parse_field(text: str, index: int) -> frozenset[int]:
    label, low, high = _FIELDS[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"bad step {step_text!r} in the {label} field")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        else:
            start_text, dash, end_text = body.partition("-")
            start = _value(start_text, index)
            end = _value(end_text, index) if dash else (high if step_text else start)
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise ScheduleError(f"{part!r} is out of range {low}-{high} in the {label} field")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ScheduleError(f"{text!r} is not a number in the {_FIELDS[index][0]} field")
    return int(text)


@dataclass(frozen=True)
class Cron:
    """A 5-field cron line (minute hour day-of-month month day-of-week) in a time zone.

    Lists, ranges, steps, `*/n`, month and weekday names and @daily-style macros work. As in
    classic cron, when both day fields are restricted a day matching either one fires. Local
    times skipped by a DST change do not fire; repeated ones fire once (the first).
    """

    expression: str
    tz: str = "UTC"
    name: str | None = None
    queue: str = DEFAULT_QUEUE
    args: list[JSON] = field(default_factory=list)
    kwargs: dict[str, JSON] = field(default_factory=dict)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _fields: list[frozenset[int]] = field(init=False, repr=False, compare=False)
    _dom_any: bool = field(init=False, repr=False, compare=False)
    _dow_any: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        line = _MACROS.get(self.expression.strip().lower(), self.expression)
        parts = line.split()
        if len(parts) != 5:
            raise ScheduleError(f"cron {self.expression!r} needs 5 fields (minute hour day month weekday)")
        try:
            zone = ZoneInfo(self.tz)
        except (KeyError, ValueError) as exc:
            raise ScheduleError(f"unknown time zone {self.tz!r}") from exc
        fields = [_parse_field(part, i) for i, part in enumerate(parts)]
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_dom_any", parts[2] == "*")
        object.__setattr__(self, "_dow_any", parts[4] == "*")

    def _day_matches(self, day: date) -> bool:
        _, _, doms, months, dows = self._fields
        if day.month not in months:
            return False
        dom_ok, dow_ok = day.day in doms, (day.weekday() + 1) % 7 in dows
        if self._dom_any or self._dow_any:
            return bool(dom_ok and dow_ok)
        return bool(dom_ok or dow_ok)

    def _fires_on(self, day: date) -> list[float]:
        """The epoch times this schedule fires on local calendar day `day`, ascending."""
        minutes, hours = self._fields[0], self._fields[1]
        zone: ZoneInfo = self._zone
        out: list[float] = []
        for hour in sorted(hours):
            for minute in sorted(minutes):
                local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                stamp = local.timestamp()
                back = datetime.fromtimestamp(stamp, zone)
                if (back.hour, back.minute) == (hour, minute):  # skip local times a DST jump removed
                    out.append(stamp)
        return out

    def next_after(self, t: float) -> float | None:
        """The first fire time strictly after epoch `t`, or None if it never fires."""
        day = datetime.fromtimestamp(t, self._zone).date()
        for offset in range(_SEARCH_DAYS):
            current = day + timedelta(days=offset)
            if self._day_matches(current):
                for stamp in self._fires_on(current):
                    if stamp > t:
                        return stamp
        return None

    def latest_at_or_before(self, t: float) -> float | None:
        """The last fire time <= epoch `t`, or None within the search horizon."""
        day = datetime.fromtimestamp(t, self._zone).date()
        for offset in range(_SEARCH_DAYS):
            current = day - timedelta(days=offset)
            if self._day_matches(current):
                for stamp in reversed(self._fires_on(current)):
                    if stamp <= t:
                        return stamp
        return None

    def describe(self) -> str:
        return self.expression


@dataclass(frozen=True)
class Every:
    """Every `seconds` (a whole number), at multiples of it since the epoch, so every worker
    computes the same fire times."""

    seconds: int
    name: str | None = None
    queue: str = DEFAULT_QUEUE
    args: list[JSON] = field(default_factory=list)
    kwargs: dict[str, JSON] = field(default_factory=dict)
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int) or self.seconds < 1:
            raise ScheduleError("Every(seconds=...) needs a whole number of seconds >= 1")

    def next_after(self, t: float) -> float | None:
        return float((int(t) // self.seconds + 1) * self.seconds)

    def latest_at_or_before(self, t: float) -> float | None:
        return float(int(t) // self.seconds * self.seconds)

    def describe(self) -> str:
        return f"every {self.seconds}s"


Schedule = Cron | Every


def schedule_from_info(info: ScheduleInfo) -> Schedule:
    """Rebuild a schedule from what a worker published (for listings)."""
    match = _EVERY_RE.match(info.expression)
    if match:
        return Every(int(match.group(1)), name=info.name, queue=info.queue)
    return Cron(info.expression, tz=info.timezone, name=info.name, queue=info.queue)


def info_of(handler: str, schedule: Schedule) -> ScheduleInfo:
    return ScheduleInfo(
        name=schedule.name or handler, handler=handler, queue=schedule.queue,
        expression=schedule.describe(), timezone=schedule.tz,
        args=list(schedule.args), kwargs=dict(schedule.kwargs),
    )


def fire_job_id(schedule_name: str, fire_time: float) -> str:
    """The deterministic job id of one fire time: `sched-<name>-<epoch>` (ids allow A-Z a-z 0-9 _ -;
    a name with other characters gets a checksum so two names never share ids)."""
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", schedule_name)
    if safe != schedule_name:
        safe = f"{safe[:30]}_{zlib.crc32(schedule_name.encode()):08x}"
    return f"sched-{safe[:40]}-{int(fire_time)}"


def due_fire(schedule: Schedule, now: float, catch_up: float) -> float | None:
    """The fire time to enqueue at `now`: the most recent one <= now, if younger than `catch_up`."""
    latest = schedule.latest_at_or_before(now)
    if latest is None or now - latest > catch_up:
        return None
    return latest


def fire_spec(info: ScheduleInfo, fire_time: float) -> JobSpec:
    return JobSpec(name=info.handler, args=list(info.args), kwargs=dict(info.kwargs), queue=info.queue,
                   id=fire_job_id(info.name, fire_time))
