"""Retention settings (issue 13): periods in years, fractions or words; under 30 days refused at
start like any other bad value; the per-run limit as a share or a count; the clock's name."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from storage.config import ConfigError, load_settings
from storage.period import Period, limit_for, parse_period

CONF = Path(__file__).resolve().parent.parent / "conf" / "pacs.toml"


@pytest.mark.parametrize(("value", "period"), [
    (7, Period(84, 0)), ("7", Period(84, 0)), (1.5, Period(18, 0)), ("0.5", Period(6, 0)),
    ("18 months", Period(18, 0)), ("2 years 6 months", Period(30, 0)), ("1 year, 2 months", Period(14, 0)),
    ("90 days", Period(0, 90)), ("12 weeks", Period(0, 84)), ("1 month", Period(1, 0)),
    (0.1, Period(0, 37)),
])
def test_periods(value, period):
    assert parse_period(value) == period


@pytest.mark.parametrize("value", [0, "0", "29 days", "-1", "soon", "", "3 fortnights", True])
def test_bad_periods(value):
    with pytest.raises(ValueError):
        parse_period(value)


def test_calendar_arithmetic():
    assert Period(84, 0).after(date(2016, 2, 29)) == date(2023, 2, 28)
    assert Period(18, 0).after(date(2024, 8, 31)) == date(2026, 2, 28)
    assert Period(0, 90).before(date(2026, 3, 31)) == date(2025, 12, 31)
    assert str(Period(30, 0)) == "2 years 6 months" and str(Period(0, 90)) == "90 days"


def test_limits():
    assert limit_for("1%", 500) == 10  # at least 10
    assert limit_for("1%", 123_456) == 1234
    assert limit_for("250", 10**6) == 250 and limit_for("0", 10) == 0


def test_the_defaults_and_the_shipped_file(tmp_path):
    for s in (load_settings(env={"PACS_DATA_DIR": str(tmp_path)}),
              load_settings(CONF, env={"PACS_DATA_DIR": str(tmp_path)})):
        assert parse_period(s.retention_years) == Period(84, 0)
        assert (s.retention_clock, s.retention_max_per_run, s.retention_first_run_delay) == \
            ("latest", "1%", 60.0)


def test_good_values_from_a_file_and_the_environment(tmp_path):
    conf = tmp_path / "pacs.toml"
    conf.write_text('[patients]\nretention_years = "18 months"\nretention_max_per_run = 50\n'
                    'retention_clock = "study_date"\n')
    s = load_settings(conf, env={"PACS_DATA_DIR": str(tmp_path)})
    assert (s.retention_years, s.retention_max_per_run, s.retention_clock) == ("18 months", "50", "study_date")
    s = load_settings(env={"PACS_DATA_DIR": str(tmp_path), "PACS_RETENTION_YEARS": "2.5",
                           "PACS_RETENTION_MAX_PER_RUN": "0.5%", "PACS_RETENTION_FIRST_RUN_DELAY": "0"})
    assert parse_period(s.retention_years) == Period(30, 0) and s.retention_first_run_delay == 0


@pytest.mark.parametrize(("name", "value", "says"), [
    ("RETENTION_YEARS", "0", "retention_years: a retention period under 30 days (0 days)"),
    ("RETENTION_YEARS", "29 days", "retention_years: a retention period under 30 days (29 days)"),
    ("RETENTION_YEARS", "-2", "retention_years: must be a positive number of years"),
    ("RETENTION_YEARS", "forever", "retention_years: expected a number of years or a duration"),
    ("RETENTION_CLOCK", "receipt", "retention_clock: one of latest, study_date, got 'receipt'"),
    ("RETENTION_MAX_PER_RUN", "lots", "retention_max_per_run: a number of patients"),
    ("RETENTION_MAX_PER_RUN", "0%", "retention_max_per_run: a share is more than 0%"),
    ("RETENTION_FIRST_RUN_DELAY", "-1", "retention_first_run_delay: must not be negative"),
])
def test_a_bad_value_is_refused_naming_its_setting(tmp_path, name, value, says):
    with pytest.raises(ConfigError) as err:
        load_settings(env={"PACS_DATA_DIR": str(tmp_path), f"PACS_{name}": value})
    assert says in str(err.value)
