"""The registry of experiments.

An experiment is one function ``fn(ctx) -> list[dict]`` decorated with :func:`experiment`:
each dict is one row of results (plain numbers and strings, so it goes to JSON as is). The
function starts whatever processes it needs and must stop them on every exit path (use
:class:`bench.procs.Procs`). Rows that failed carry an ``"error"`` string instead of numbers.

    @experiment("my_exp", "What it measures", columns=[("case", "case", ""), ("msgs_per_s", "msgs/s", ",.0f")])
    def my_exp(ctx: Context) -> list[dict]:
        return [{"case": "x", "msgs_per_s": 123.0}]

``plot(results, ceilings, out_dir) -> list[Path]`` draws the experiment's figures (optional).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Row = dict[str, Any]
Column = tuple[str, str, str]  # row key, header, format spec ("" = str())


@dataclass
class Context:
    quick: bool
    out: Path
    results: dict[str, list[Row]] = field(default_factory=dict)  # rows of experiments already run
    notes: dict[str, list[str]] = field(default_factory=dict)
    current: str = ""
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        """A remark kept with the experiment's results (printed under its table and saved)."""
        self.notes.setdefault(self.current, []).append(text)
        self.say(f"  note: {text}")

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Experiment:
    name: str
    title: str
    fn: Callable[[Context], list[Row]]
    columns: list[Column] | None = None
    plot: Callable[..., list[Path]] | None = None


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(
    name: str, title: str, columns: list[Column] | None = None, plot: Callable[..., list[Path]] | None = None
) -> Callable[[Callable[[Context], list[Row]]], Callable[[Context], list[Row]]]:
    """Register ``fn`` under ``name``; experiments run in the order they are registered."""

    def register(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} registered twice")
        EXPERIMENTS[name] = Experiment(name, title, fn, columns, plot)
        return fn

    return register
