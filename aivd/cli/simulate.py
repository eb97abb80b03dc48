"""`aivd simulate`: compare scheduling policies and pipelines in the discrete-event simulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from aivd.sim.engine import Upload

simulate_app = typer.Typer(
    help="Simulate the edge-cloud pipeline under a scheduling policy (docs/scheduling.md).", invoke_without_command=True)

ALL_POLICIES = "rr,sra,random,jsq,p2c,aivd,ect"
# The paper's three pipelines: (label, edge policy or None for no edge stage, what goes to the cloud).
PIPELINES: tuple[tuple[str, str | None, Upload], ...] = (("cloud-only", None, "image"), ("edge-cloud", "rr", "image"), ("aivd", "aivd", "crops"))
CSV_FIELDS = ("scenario", "nodes", "run", "throughput_per_s", "capacity_per_s", "capacity_fraction", "reachable_per_s",
              "reachable_fraction", "latency_mean_ms",
              "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "comm_latency_mean_ms", "lost")


def parse_list(text: str, kind: type = str) -> list:
    return [kind(part.strip()) for part in text.split(",") if part.strip()]


def check_policies(names: list[str]) -> list[str]:
    from aivd.scheduling import POLICIES

    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise typer.BadParameter(f"unknown policies {unknown}; known: {', '.join(POLICIES)}", param_hint="--policies")
    return names


@simulate_app.callback()
def compare(
    ctx: typer.Context,
    scenario: int = typer.Option(3, min=1, max=3, help="1 normal, 2 dynamic network, 3 high load and latency."),
    nodes: int = typer.Option(16, min=1, help="Number of edge nodes (classes cycle gpu, ipc, arm, ipc)."),
    policies: str = typer.Option(ALL_POLICIES, help="Comma-separated policies to compare."),
    tasks: int = typer.Option(10_000, min=1, help="Images to simulate."),
    seed: int = typer.Option(0, help="Seed; identical seeds give identical output."),
    load: Optional[float] = typer.Option(None, min=0.01, help="Override the scenario's load (1 = the capacity bound)."),
    max_in_flight: Optional[int] = typer.Option(
        None, min=1, help="Cap on tasks in flight per node; the dispatcher holds the rest (late binding). "
        "Default: every task is placed on arrival (aivd still holds work a node could not start within bind_ahead_s)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Run each policy on one scenario and print throughput, latency and lost tasks per policy."""
    if ctx.invoked_subcommand:
        return
    from aivd.sim import SCENARIOS, capacity_per_s, simulate, with_load

    names = check_policies(parse_list(policies))
    chosen = SCENARIOS[scenario] if load is None else with_load(SCENARIOS[scenario], load)
    results = {name: simulate(chosen, nodes, name, tasks, seed, max_in_flight=max_in_flight).summary() for name in names}
    report = {"scenario": scenario, "nodes": nodes, "capacity_per_s": round(capacity_per_s(chosen, nodes), 3),
              "policies": results}
    if as_json:
        typer.echo(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"scenario {scenario} ({chosen.name}), {nodes} nodes, capacity {report['capacity_per_s']}/s")
    for column in ("policy", "throughput/s", "of capacity", "of reachable", "mean ms", "p50 ms", "p95 ms", "p99 ms", "comm ms", "lost"):
        table.add_column(column, justify="right")
    latency_keys = ("latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "comm_latency_mean_ms")
    for name, r in results.items():
        table.add_row(name, f"{r['throughput_per_s']:.1f}", f"{r['capacity_fraction']:.1%}", f"{r['reachable_fraction']:.1%}",
                      *(f"{r[k]:.0f}" for k in latency_keys), str(r["lost"]))
    Console().print(table)


@simulate_app.command("sweep")
def sweep(
    out: Path = typer.Option(..., file_okay=False, help="Folder for results.csv and the PNG figures."),
    scenarios: str = typer.Option("1,2,3", help="Comma-separated scenarios."),
    node_counts: str = typer.Option("4,8,12,16", "--nodes", help="Comma-separated node counts."),
    policies: str = typer.Option(ALL_POLICIES, help="Comma-separated policies."),
    tasks: int = typer.Option(3_000, min=1, help="Images per run."),
    seed: int = typer.Option(0, help="Seed; identical seeds give identical output."),
) -> None:
    """Every policy and the paper's three pipelines against node count, per scenario: CSV and PNG figures."""
    from aivd.sim import SCENARIOS, simulate

    names = check_policies(parse_list(policies))
    rows = []
    for scenario in parse_list(scenarios, int):
        if scenario not in SCENARIOS:
            raise typer.BadParameter(f"unknown scenario {scenario}", param_hint="--scenarios")
        for n in parse_list(node_counts, int):
            runs: list[tuple[str, str | None, Upload]] = [(name, name, "crops") for name in names]
            runs += [(f"pipeline:{label}", policy, upload) for label, policy, upload in PIPELINES]
            for label, policy, upload in runs:
                r = simulate(SCENARIOS[scenario], n, policy, tasks, seed, upload=upload)
                rows.append({"scenario": scenario, "nodes": n, "run": label,
                             **{k: getattr(r, k) for k in CSV_FIELDS[3:]}})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    figures = plot(rows, out)
    typer.echo(json.dumps({"csv": str(out / "results.csv"), "figures": [str(f) for f in figures], "runs": len(rows)}))


def plot(rows: list[dict], out: Path) -> list[Path]:
    """One figure per scenario and group (policies, pipelines): throughput and mean latency against node count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for scenario in sorted({r["scenario"] for r in rows}):
        for group, keep in (("policies", lambda run: not run.startswith("pipeline:")),
                            ("pipelines", lambda run: run.startswith("pipeline:"))):
            mine = [r for r in rows if r["scenario"] == scenario and keep(r["run"])]
            fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
            for run in dict.fromkeys(r["run"] for r in mine):
                points = sorted((r["nodes"], r["throughput_per_s"], r["latency_mean_ms"]) for r in mine if r["run"] == run)
                xs = [p[0] for p in points]
                left.plot(xs, [p[1] for p in points], marker="o", label=run.removeprefix("pipeline:"))
                right.plot(xs, [p[2] for p in points], marker="o", label=run.removeprefix("pipeline:"))
            left.set(xlabel="edge nodes", ylabel="throughput (images/s)", title=f"scenario {scenario}: throughput")
            right.set(xlabel="edge nodes", ylabel="mean latency (ms)", yscale="log", title=f"scenario {scenario}: mean latency")
            left.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"scenario{scenario}_{group}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            figures.append(path)
    return figures
