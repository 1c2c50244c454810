"""Retention periods and run limits as written in the settings (issue 13).

``retention_years`` is a number of years (``7``, ``1.5``) or a duration in words (``"18 months"``,
``"2 years 6 months"``, ``"90 days"``, ``"12 weeks"``). It becomes a :class:`Period` of calendar
months plus days, so "7 years" after 29 February is 28 February, as a person would count. Nothing
on PyPI parses this small grammar into calendar months (``isodate`` wants ISO 8601 ``P18M``,
``pytimeparse`` returns seconds), hence the few lines here.

``retention_max_per_run`` is a number of patients (``250``) or a share of the archive (``"1%"``,
never fewer than :data:`MIN_SHARE_FLOOR` patients).
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

#: A period shorter than this is refused at start: a typo (``retention_years = 0``) must not shred.
MIN_DAYS = 30
#: A percentage limit never allows fewer than this many patients per run.
MIN_SHARE_FLOOR = 10
_DAYS_PER_YEAR = 365.2425
_DAYS_PER_MONTH = _DAYS_PER_YEAR / 12
_UNITS = {"year": "y", "years": "y", "y": "y", "month": "m", "months": "m", "mo": "m",
          "week": "w", "weeks": "w", "w": "w", "day": "d", "days": "d", "d": "d"}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?")


@dataclass(frozen=True)
class Period:
    """Calendar months plus days."""

    months: int
    days: int

    @property
    def approx_days(self) -> float:
        return self.months * _DAYS_PER_MONTH + self.days

    def after(self, start: date) -> date:
        return _add_months(start, self.months) + timedelta(days=self.days)

    def before(self, end: date) -> date:
        return _add_months(end - timedelta(days=self.days), -self.months)

    def __str__(self) -> str:
        parts = []
        years, months = divmod(self.months, 12)
        if years:
            parts.append(f"{years} year{'s' * (years != 1)}")
        if months:
            parts.append(f"{months} month{'s' * (months != 1)}")
        if self.days or not parts:
            parts.append(f"{self.days} day{'s' * (self.days != 1)}")
        return " ".join(parts)


def _add_months(d: date, months: int) -> date:
    total = d.year * 12 + d.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _from_years(years: float) -> Period:
    months = years * 12
    if abs(months - round(months)) < 1e-9:
        return Period(round(months), 0)
    return Period(0, round(years * _DAYS_PER_YEAR))


def parse_period(value: Any) -> Period:
    """A retention period from a number of years or words; ValueError saying why not."""
    if isinstance(value, bool):
        raise ValueError("expected a number of years or a duration such as '18 months'")
    if isinstance(value, (int, float)):
        years = float(value)
    else:
        text = str(value).strip().lower()
        try:
            years = float(text)
        except ValueError:
            return _check(_parse_words(text))
    if not math.isfinite(years) or years < 0:
        raise ValueError("must be a positive number of years")
    return _check(_from_years(years))


def _parse_words(text: str) -> Period:
    pos, months, days = 0, 0.0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None or m.group(2) not in _UNITS:
            raise ValueError("expected a number of years or a duration such as '18 months', "
                             "'2 years 6 months' or '90 days'")
        n, unit = float(m.group(1)), _UNITS[m.group(2)]
        if unit == "y":
            p = _from_years(n)
            months, days = months + p.months, days + p.days
        elif unit == "m":
            whole = math.floor(n)
            months, days = months + whole, days + (n - whole) * _DAYS_PER_MONTH
        else:
            days += n * (7 if unit == "w" else 1)
        pos = m.end()
    if pos == 0:
        raise ValueError("is empty")
    return Period(int(months), round(days))


def _check(p: Period) -> Period:
    if p.approx_days < MIN_DAYS:
        raise ValueError(f"a retention period under {MIN_DAYS} days ({p}) would shred records "
                         "almost as they arrive")
    return p


def parse_limit(value: Any) -> tuple[int, float | None]:
    """``retention_max_per_run``: (count, None) for a number of patients, (floor, share) for 'N%'."""
    text = str(value).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = -1.0
        if not math.isfinite(share) or not 0 < share <= 100:
            raise ValueError("a share is more than 0% and at most 100%, such as '1%'")
        return MIN_SHARE_FLOOR, share / 100
    if not (text.isascii() and text.isdigit()):
        raise ValueError("a number of patients (0 or more) or a share such as '1%'")
    return int(text), None


def limit_for(value: Any, patients: int) -> int:
    """The most patients one unconfirmed run may shred in an archive of ``patients``."""
    count, share = parse_limit(value)
    if share is None:
        return count
    return max(count, math.floor(patients * share))
