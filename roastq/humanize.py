"""Figures for people: ages as ``8m 08s``, dollars to the cent (or a tenth of a cent when small),
counts with thousands separators; and ages as people write them read back (``30m``, ``7d``). The CLI's tables and the console's pages both use these;
``--json`` and the console's data keep the raw values."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class AgeError(ValueError):
    """A text that is not an age (or a date) as people write them."""


def age(seconds) -> str:
    """90 -> '1m 30s'; 29288 -> '8h 08m'; 0.4 -> '0.4s'; None -> '-'."""
    if seconds is None:
        return "-"
    s = float(seconds)
    sign, s = ("-", -s) if s < 0 else ("", s)
    if s < 10:
        return f"{sign}{s:.1f}s"
    s = int(round(s))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


def since(moment, now: datetime | None = None) -> str:
    """How long ago a timestamp was, as an age ('3m 05s ago')."""
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    return f"{age((now - moment).total_seconds())} ago"


def usd(value) -> str:
    """Dollars to the cent; under a dollar, to a tenth of a cent ('$0.012'); None -> '-'."""
    if value is None:
        return "-"
    v = Decimal(str(value))
    if v != 0 and abs(v) < 1:
        return f"${v:.3f}"
    return f"${v:,.2f}"


def count(value) -> str:
    return "-" if value is None else f"{int(value):,}"


def moment(value) -> str:
    """A timestamp to the second, in UTC."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


# -- read back from people -------------------------------------------------------------------


def parse_age(text: str) -> float:
    """'90s', '15m', '2h', '7d', '1w' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise AgeError(f"{text!r} is not an age: use a number and a unit, e.g. 30m, 2h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str) -> datetime:
    """An age ('2h': two hours ago) or an ISO date or time ('2026-03-01', '2026-03-01T12:00')."""
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*[smhdw]\s*", text):
        return datetime.now(UTC) - timedelta(seconds=parse_age(text))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AgeError(f"{text!r} is neither an age (30m, 2h, 7d) nor an ISO date (2026-03-01[T12:00])") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
