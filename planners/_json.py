"""JSON helpers shared by the value classes: ``to_json``/``from_json`` on top of ``to_dict``."""

from __future__ import annotations

import json
import math
from typing import Any, Self

__all__: list[str] = []


class JsonMixin:
    """Adds ``to_json``/``from_json`` to a class that defines ``to_dict``/``from_dict``."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        """Return this value as strict JSON text (no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Parse JSON text written by ``to_json``."""
        return cls.from_dict(json.loads(text))


def finite_or_none(value: float | None) -> float | None:
    """Map +-inf and NaN to None so the value survives strict JSON."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def int_keyed(data: dict[Any, Any] | None) -> dict[int, float]:
    """Turn a JSON object with string keys ("4": 0.1) back into an int-keyed float dict."""
    return {int(k): float(v) for k, v in (data or {}).items()}
