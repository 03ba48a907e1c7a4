"""Estimated model cost: a per-model price table, in USD per million tokens.

Prices are list prices at the time of writing and only an estimate; deployments
with other prices (or other models) override them with the
``LOOMVIEW_MODEL_PRICES`` environment variable, a JSON object such as
``{"gpt-4o": [2.5, 10], "my-model": {"input": 1, "output": 2}}``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ImproperlyConfigured

PRICES_ENV = "LOOMVIEW_MODEL_PRICES"

# (input, output) USD per 1M tokens.
DEFAULT_PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-5": (Decimal("1.25"), Decimal("10.00")),
    "gpt-5-mini": (Decimal("0.25"), Decimal("2.00")),
    "gpt-5-nano": (Decimal("0.05"), Decimal("0.40")),
    "o3": (Decimal("2.00"), Decimal("8.00")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
    # The offline demo model: a nominal price so the cost column shows something.
    "loomview-demo-1": (Decimal("1.00"), Decimal("2.00")),
}

PER_TOKENS = Decimal(1_000_000)


def _price(name: str, value: Any) -> tuple[Decimal, Decimal]:
    if isinstance(value, dict):
        value = [value.get("input"), value.get("output")]
    if not isinstance(value, list) or len(value) != 2:
        raise ImproperlyConfigured(
            f"{PRICES_ENV}: price of {name!r} must be [input, output] or "
            '{"input": ..., "output": ...} in USD per million tokens'
        )
    try:
        prices = (Decimal(str(value[0])), Decimal(str(value[1])))
    except InvalidOperation:
        raise ImproperlyConfigured(f"{PRICES_ENV}: price of {name!r} is not a number") from None
    # Finite first: comparing a NaN Decimal raises instead of answering.
    if not all(p.is_finite() for p in prices) or prices[0] < 0 or prices[1] < 0:
        raise ImproperlyConfigured(f"{PRICES_ENV}: price of {name!r} must be a finite number >= 0")
    return prices


def load_prices(raw: str) -> dict[str, tuple[Decimal, Decimal]]:
    """The default table with the JSON override in ``raw`` (may be empty) applied on top."""
    prices = dict(DEFAULT_PRICES)
    if not raw.strip():
        return prices
    try:
        override = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{PRICES_ENV} is not valid JSON: {exc}") from None
    if not isinstance(override, dict):
        raise ImproperlyConfigured(f"{PRICES_ENV} must be a JSON object of model -> price")
    for name, value in override.items():
        prices[str(name)] = _price(str(name), value)
    return prices


def estimate(
    tokens_by_model: dict[str, tuple[int, int]], prices: Mapping[str, Sequence[Any]]
) -> Decimal | None:
    """USD for these (input, output) tokens per model; None if any used model has no price.

    Prices may be Decimals or strings (settings written by hand); ``"*"``, when
    present, prices every model not listed.
    """
    total = Decimal(0)
    for model, (tokens_in, tokens_out) in tokens_by_model.items():
        price = prices.get(model, prices.get("*"))
        if price is None:
            return None
        price_in, price_out = _decimal(price[0]), _decimal(price[1])
        total += (price_in * tokens_in + price_out * tokens_out) / PER_TOKENS
    return total


@functools.lru_cache(maxsize=1024, typed=True)
def _decimal(value: Any) -> Decimal:
    """A price as a Decimal; cached: the rollups price every run of every batch."""
    return Decimal(str(value))
