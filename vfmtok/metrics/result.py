"""Typed metric results: a value with the number of samples behind it, or the reason there is none.

Evaluation functions report ``{metric key: MetricResult}`` (their ``"results"``); the benchmark turns any such
mapping into result rows without naming keys (``benchmarks.records.stage_rows``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricResult:
    """One number in the library's units, ``n`` samples behind it, and the setting it was measured under
    (e.g. KID's subset size); ``value`` None needs a ``reason``."""

    value: float | None
    n: int | None = None
    reason: str | None = None
    setting: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError("a metric result without a value needs a reason")
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))

    @classmethod
    def unavailable(cls, reason: str, n: int | None = None, setting: dict[str, Any] | None = None) -> MetricResult:
        """A documented absence of a value."""
        return cls(None, n, reason, dict(setting or {}))


Results = dict[str, MetricResult]


def results_to_json(results: Mapping[str, MetricResult]) -> dict[str, dict[str, Any]]:
    """Plain-data form of ``results`` (for JSON files)."""
    return {key: asdict(result) for key, result in results.items()}


def results_from_json(data: Mapping[str, Mapping[str, Any]]) -> Results:
    """Inverse of :func:`results_to_json`."""
    return {key: MetricResult(**fields) for key, fields in data.items()}
