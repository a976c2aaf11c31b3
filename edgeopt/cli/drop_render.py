"""Rich tables for ``edgeopt drop-layers``: the plan, the ranking and the result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeopt.blocks.residual import Block
from edgeopt.cli.render import summary_table
from edgeopt.layers.drop import DropFileResult


@contextlib.contextmanager
def blocks_progress(console: Console, *, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar advanced once per scored block (the total is learnt on the first call)."""
    columns = (TextColumn("scoring blocks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=disable, transient=True) as progress:
        task = progress.add_task("scoring", total=None)

        def advance(done: int) -> None:
            progress.update(task, completed=done)

        yield advance


def plan_table(blocks: list[Block]) -> Table:
    table = Table(title="droppable blocks (from the graph structure)")
    for column, justify in (("block", "left"), ("input -> output", "left"), ("nodes", "right"),
                            ("parameters", "right"), ("attention", "left"), ("droppable", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for b in blocks:
        table.add_row(b.name, f"{b.start} -> {b.end}", str(len(b.nodes)), f"{b.parameters:,}",
                      "yes" if b.attention else "", "yes" if b.droppable else f"no: {b.reason}")
    return table


def drop_tables(result: DropFileResult, *, show_report: bool) -> Group:
    r = result.result
    parts: list[Any] = [summary_table(result.before, result.after)]
    if show_report:
        ranking = Table(title="blocks ranked by the output change when bypassed alone (most droppable first)")
        for column in ("block", "1 - output cosine", "top-1 agreement", "1 - cos(in, out)", "parameters", "dropped"):
            ranking.add_column(column, justify="left" if column == "block" else "right")
        for s in r.scores:
            agreement = "" if s.agreement is None else f"{s.agreement:.4f}"
            ranking.add_row(s.name, f"{s.impact:.5f}", agreement, f"{s.influence:.5f}", f"{s.parameters:,}",
                            "yes" if s.name in r.dropped else "")
        parts.append(ranking)
    fidelity = Table(title="result vs the original (calibration data)", show_header=False)
    fidelity.add_column()
    fidelity.add_column(justify="right")
    fidelity.add_row("dropped", ", ".join(r.dropped) or "nothing")
    fidelity.add_row(f"metric ({r.metric})", f"{r.score:.4f}")
    if r.repaired:
        fidelity.add_row("refitted projections", str(len(r.repaired)))
    if r.steps:
        fidelity.add_row("--max-drop evaluations", str(len(r.steps)))
    for i, s in enumerate(r.greedy, start=1):
        fidelity.add_row(f"greedy pick {i}: {s.name}", f"cosine {s.output_cosine:.4f}")
    parts.append(fidelity)
    parts.append(f"wrote {result.output}")
    return Group(*parts)


def drop_json(result: DropFileResult) -> dict[str, Any]:
    r = result.result
    return {"output": str(result.output), "before": result.before.as_dict(), "after": result.after.as_dict(),
            "dropped": list(r.dropped), "metric": r.metric, "score": r.score, "repaired": r.repaired,
            "ranking": [asdict(s) for s in r.scores], "greedy": [asdict(s) for s in r.greedy],
            "steps": [{"kept": list(s.float_nodes), "score": s.score, "drop": s.drop} for s in r.steps]}
