"""The price table and the cost estimate: exact decimals, overrides, clear errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured

from tracing import pricing


def test_no_override_is_the_default_table_as_a_copy() -> None:
    prices = pricing.load_prices("  ")
    assert prices == pricing.DEFAULT_PRICES
    prices["gpt-4o"] = (Decimal(0), Decimal(0))
    assert pricing.DEFAULT_PRICES["gpt-4o"] == (Decimal("2.50"), Decimal("10.00"))


def test_an_override_adds_and_replaces_models_in_either_form() -> None:
    prices = pricing.load_prices('{"gpt-4o": [5, 15.5], "local": {"input": 0, "output": "0.25"}}')
    assert prices["gpt-4o"] == (Decimal("5"), Decimal("15.5"))
    assert prices["local"] == (Decimal("0"), Decimal("0.25"))
    assert prices["gpt-4o-mini"] == pricing.DEFAULT_PRICES["gpt-4o-mini"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{nope", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"m": [1]}', "price of 'm' must be [input, output]"),
        ('{"m": 3}', "price of 'm' must be [input, output]"),
        ('{"m": {"input": 1}}', "price of 'm' is not a number"),
        ('{"m": ["cheap", 1]}', "price of 'm' is not a number"),
        ('{"m": [-1, 1]}', "must be a finite number >= 0"),
        ('{"m": ["Infinity", 1]}', "must be a finite number >= 0"),
        ('{"m": [1, "NaN"]}', "must be a finite number >= 0"),
    ],
)
def test_a_bad_override_is_a_configuration_error_that_names_the_variable(
    raw: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        pricing.load_prices(raw)
    assert pricing.PRICES_ENV in str(error.value) and message in str(error.value)


def test_estimate_is_exact_per_model_and_summed() -> None:
    prices = pricing.load_prices('{"a": [3, 15], "b": ["0.1", "0.4"]}')
    cost = pricing.estimate({"a": (1000, 200), "b": (1_000_000, 10)}, prices)
    # a: (3 * 1000 + 15 * 200) / 1e6 = 0.006; b: (0.1 * 1e6 + 0.4 * 10) / 1e6 = 0.100004
    assert cost == Decimal("0.106004")
    assert pricing.estimate({}, prices) == Decimal(0)
    assert pricing.estimate({"a": (0, 0)}, prices) == Decimal(0)


def test_one_unpriced_model_makes_the_estimate_unknown_unless_a_wildcard_prices_it() -> None:
    prices = pricing.load_prices('{"a": [1, 1]}')
    assert pricing.estimate({"a": (10, 10), "mystery": (1, 1)}, prices) is None
    with_wildcard = {**prices, "*": ("2", "4")}
    cost = pricing.estimate({"a": (1_000_000, 0), "mystery": (1_000_000, 1_000_000)}, with_wildcard)
    assert cost == Decimal(1 + 2 + 4)
