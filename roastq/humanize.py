"""Figures for people: ages as ``8m 08s``, dollars to the cent (or a tenth of a cent when small),
counts with thousands separators. The CLI's tables and the console's pages both use these;
``--json`` and the console's data keep the raw values."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal


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
    now = now or datetime.now(timezone.utc)
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
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")
