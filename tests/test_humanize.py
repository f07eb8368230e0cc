"""Figures for people (roastq/humanize.py): what the CLI's tables and the console's pages print."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from roastq import humanize


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "-"),
        (0.4, "0.4s"),
        (9.94, "9.9s"),
        (42, "42s"),
        (90, "1m 30s"),
        (488, "8m 08s"),
        (29288, "8h 08m"),
        (3 * 86400 + 7200, "3d 02h"),
        (-90, "-1m 30s"),
    ],
)
def test_ages(seconds, text):
    assert humanize.age(seconds) == text


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "-"),
        (0, "$0.00"),
        (Decimal("0.016234"), "$0.016"),
        (Decimal("0.0004"), "$0.000"),
        (Decimal("1.5"), "$1.50"),
        (Decimal("1234.567"), "$1,234.57"),
        (0.25, "$0.250"),
    ],
)
def test_dollars_to_the_cent_or_a_tenth_of_a_cent(value, text):
    assert humanize.usd(value) == text


def test_counts_and_moments():
    assert humanize.count(1234567) == "1,234,567" and humanize.count(None) == "-"
    moment = datetime(2026, 3, 1, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert humanize.moment(moment) == "2026-03-01 10:00:05"  # in UTC
    assert humanize.since(moment, now=moment + timedelta(seconds=185)) == "3m 05s ago"


def test_ages_and_dates_read_back():
    assert humanize.parse_age("90s") == 90 and humanize.parse_age(" 2h ") == 7200 and humanize.parse_age("1w") == 604800
    before = datetime.now(UTC)
    assert abs((before - humanize.parse_since("30m")).total_seconds() - 1800) < 5
    assert humanize.parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    for bad in ("", "soon", "5 minutes"):
        with pytest.raises(humanize.AgeError):
            humanize.parse_age(bad)
    for bad in ("", "yesterday", "2026-13-01"):
        with pytest.raises(humanize.AgeError):
            humanize.parse_since(bad)
