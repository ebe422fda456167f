"""The operator's price table (MODEL_PRICES): USD per million tokens, per `provider/model`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NANO_PER_USD = 1_000_000_000
_NANO_PER_TOKEN_PER_USD_PER_MILLION = NANO_PER_USD / 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    input: float = 0.0
    output: float = 0.0


class PriceTable:
    """Exact `provider/model` first, then `provider/*`; a model without a price costs 0."""

    def __init__(self, prices: Mapping[str, Mapping[Any, float]] | None = None) -> None:
        self._prices = {
            model: Price(float(entry.get("input", 0.0)), float(entry.get("output", 0.0)))
            for model, entry in (prices or {}).items()
        }

    def price(self, model: str) -> Price | None:
        found = self._prices.get(model)
        if found is None:
            provider = model.partition("/")[0]
            found = self._prices.get(f"{provider}/*")
        return found

    def cost_nanousd(self, model: str, input_tokens: int, output_tokens: int) -> int:
        price = self.price(model)
        if price is None:
            return 0
        per_token = _NANO_PER_TOKEN_PER_USD_PER_MILLION
        return round(input_tokens * price.input * per_token + output_tokens * price.output * per_token)


def nano_to_usd(nano: int) -> float:
    return nano / NANO_PER_USD
