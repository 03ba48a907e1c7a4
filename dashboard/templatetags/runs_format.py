"""Compact number, duration, time and money formats for dense tables."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django import template

from tracing.models import ns_to_datetime

register = template.Library()


@register.filter
def compact(value: int | None) -> str:
    """1234 -> 1.2k, 5600000 -> 5.6M; small numbers as they are."""
    if value is None:
        return "—"
    number = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            scaled = number / limit
            text = f"{scaled:.1f}" if abs(scaled) < 100 else f"{scaled:.0f}"
            return text.removesuffix(".0") + suffix
    return str(int(number))


@register.filter
def exact(value: int | None) -> str:
    """1296 -> 1,296: the number a compact figure stands for."""
    if value is None:
        return "—"
    return f"{int(value):,}"


@register.filter
def duration_ns(value: int | None) -> str:
    if value is None:
        return "—"
    ms = value / 1e6
    if ms < 10:
        return f"{ms:.1f} ms"  # span trees are full of sub-10 ms tool and handoff spans
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


@register.filter
def ago(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 0:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 86400 * 30:
        return f"{int(seconds // 86400)} d ago"
    return moment.strftime("%Y-%m-%d")


@register.filter
def usd(value: Decimal | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if value < Decimal("0.01"):
        return f"${value:.4f}"
    if value < 100:
        return f"${value:.2f}"
    return f"${value:,.0f}"


@register.filter
def ns_datetime(value: int | None) -> datetime | None:
    """Nanoseconds since the epoch (as spans and histories give times) as a datetime."""
    return ns_to_datetime(value)
