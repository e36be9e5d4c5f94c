"""Five-field cron schedules (minute hour day-of-month month day-of-week), in UTC.

Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, and lists of these;
day-of-week counts Sunday as 0 (7 too). As in cron, when both day fields are restricted a
day matches if either does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from control_plane.errors import InvalidInputError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_SEARCH_DAYS = 366 * 5  # a schedule with no time in five years never fires (e.g. 30 February)


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> CronSchedule:
        parts = text.split()
        if len(parts) != 5:
            raise InvalidInputError(
                f"schedule {text!r} needs 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}", detail={"field": "triggers.schedule"})
        values = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if d == 7 else d for d in values[4])
        return cls(values[0], values[1], values[2], values[3], weekdays,
                   days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*")

    def next_after(self, moment: datetime) -> datetime | None:
        """The first scheduled minute strictly after ``moment`` (a UTC datetime)."""
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(_SEARCH_DAYS):
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        return None

    def _day_matches(self, day: datetime) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays  # Python: Monday 0; cron: Sunday 0
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    chosen: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                first, last = low, high
            elif "-" in span:
                first_text, last_text = span.split("-", 1)
                first, last = int(first_text), int(last_text)
            else:
                first = last = int(span)
                if step_text:
                    last = high
        except ValueError:
            raise InvalidInputError(f"schedule: {name} field {text!r} is not cron syntax",
                                    detail={"field": "triggers.schedule"}) from None
        if step < 1 or not low <= first <= last <= high:
            raise InvalidInputError(
                f"schedule: {name} field {text!r} must lie in {low}-{high} with a step of 1 or more",
                detail={"field": "triggers.schedule"})
        chosen.update(range(first, last + 1, step))
    return frozenset(chosen)
