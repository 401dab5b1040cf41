"""What an evaluation measured: configurations, per-dataset results, the whole run.

Plain data (written as ``results.json``), read by :mod:`twostage.report` and produced by
:mod:`twostage.evaluation`; this module imports neither.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def short_name(spec: str) -> str:
    """A model spec as a configuration name shows it: a folder's last part, else the spec."""
    return Path(spec).name if os.sep in spec else spec


@dataclass
class Config:
    """One evaluated configuration: a first stage, optionally a reranker at a depth."""

    name: str
    first_stage: str
    reranker: str | None = None
    depth: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_file: str = ""  # relative to the report folder; shared by configurations that rank alike


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    name: str
    split: str
    queries: int
    documents: int
    configs: list[Config]
    latency: dict[str, dict[str, dict[int, dict[str, float]]]]  # reranker -> stage -> depth
    comparisons: list[dict[str, Any]]
    seconds: dict[str, float]
    budget_ms: float
    collection: str = ""  # the folder searched
    collection_reused: bool = False  # the user's own collection (nothing embedded)
    encoder: str = ""  # name (precision) of the encoder that embedded it
    ignore_self: bool = False  # a query's own document was dropped from its rankings
    self_matches: int = 0  # queries whose id is a document id of the corpus

    def table(self) -> dict[str, dict[str, float]]:
        """``{configuration name: {measure: value}}``."""
        return {c.name: c.metrics for c in self.configs}

    def affordable_depth(self, reranker: str, first_stage: str) -> int | None:
        """The deepest measured depth whose p99 latency fits the budget (None: none does)."""
        lat = self.latency.get(reranker, {}).get(first_stage, {})
        fits = [d for d, v in lat.items() if v["p99"] <= self.budget_ms]
        return max(fits) if fits else None

    def affordable_text(self, reranker: str, first_stage: str) -> str:
        """:meth:`affordable_depth` in words: ``"50"``, ``"none of 10, 20"``, ``"not measured"``."""
        lat = self.latency.get(reranker, {}).get(first_stage, {})
        if not lat:
            return "not measured"
        fit = self.affordable_depth(reranker, first_stage)
        if fit is None:
            return "none of " + ", ".join(str(d) for d in sorted(lat))
        return str(fit)


@dataclass
class Evaluation:
    """The result of :func:`twostage.evaluation.evaluate` (also written as results.json)."""

    datasets: list[DatasetResult]
    depths: list[int]
    first_stages: list[str]
    rerankers: list[str]
    command: str
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


__all__ = ["Config", "DatasetResult", "Evaluation", "short_name"]
