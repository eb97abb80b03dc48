"""`aivd bench cluster`'s statistics over repeats and `aivd bench router`'s decision times (the Ray runs themselves
are in test_runtime.py's integration test)."""

import json

import pytest
from typer.testing import CliRunner

from aivd.bench.cluster import mean_ci95, ratios, run_order, summarise


def run(throughput, mean, p99, lost=0, errors=0):
    return {"throughput_per_s": throughput, "latency_mean_ms": mean, "latency_p50_ms": 0.9 * mean, "latency_p99_ms": p99,
            "lost": lost, "errors": errors, "completed": 10}


def test_mean_and_t_interval_over_repeats():
    mean, interval = mean_ci95([1.0, 2.0, 3.0])
    # t(0.975, 2 degrees of freedom) = 4.303; standard error 1 / sqrt(3)
    assert mean == 2.0 and interval == pytest.approx([2.0 - 2.4843, 2.0 + 2.4843], abs=1e-3)
    assert mean_ci95([5.0]) == (5.0, None)


def test_summary_keeps_the_keys_as_means_with_intervals_beside_them_and_counts_every_loss():
    summary = summarise([run(10, 100, 300, lost=1), run(12, 140, 500, errors=2)])
    assert summary["throughput_per_s"] == 11 and summary["latency_mean_ms"] == 120 and summary["latency_p99_ms"] == 400
    assert summary["latency_p50_ms"] == 108 and summary["latency_p50_ms_ci95"] is not None
    low, high = summary["latency_mean_ms_ci95"]
    assert low < 120 < high
    assert (summary["lost"], summary["errors"], summary["completed"]) == (1, 2, 20)


def test_ratios_pair_each_repeat_with_the_references_run_of_the_same_repeat():
    # The repeats differ a lot, the policy is 0.5x the reference's latency in each: the paired ratio has no spread.
    mine = [run(10, 50, 100), run(10, 500, 1000)]
    reference = [run(10, 100, 200), run(10, 1000, 2000)]
    out = ratios(mine, reference)
    assert out["latency_mean_ms"] == 0.5 and out["latency_mean_ms_ci95"] == [0.5, 0.5]


def test_every_policy_takes_every_position_in_turn():
    labels = ["aivd", "p2c", "p2c-again"]
    orders = [run_order(labels, r) for r in range(3)]
    assert all(sorted(order) == sorted(labels) for order in orders)
    assert all({order[position] for order in orders} == set(labels) for position in range(3))


def test_bench_router_prints_decision_times_per_replica_count():
    pytest.importorskip("ray.serve")
    from aivd.cli.bench import bench_app

    result = CliRunner().invoke(bench_app, ["router", "--replicas", "4,32", "--decisions", "50", "--policy", "aivd"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["replicas"]) == {"4", "32"} and report["policy"] == "aivd"
    for times in report["replicas"].values():
        assert 0 < times["median_ms"] <= times["p99_ms"]
    bad = CliRunner().invoke(bench_app, ["router", "--replicas", "0"])
    assert bad.exit_code != 0 and "positive" in bad.output


def test_simulate_only_predicts_the_runs_with_the_bench_s_own_send_times_and_no_node_events():
    import numpy as np

    from aivd.bench.cluster import bench_arrivals, bench_scenario
    from aivd.cli.bench import bench_app
    from aivd.sim import capacity_per_s, simulate

    result = CliRunner().invoke(bench_app, ["cluster", "--simulate-only", "--nodes", "4", "--scenario", "3", "--policies",
                                            "aivd,p2c", "--requests", "60", "--repeat", "2", "--time-scale", "10", "--seed", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    aivd, p2c = report["simulator"]["aivd"], report["simulator"]["p2c"]
    assert len(aivd["runs"]) == len(p2c["runs"]) == 2 and "ratio_to_p2c" in aivd and "ratio_to_p2c" not in p2c
    assert aivd["latency_mean_ms"] == pytest.approx(np.mean([r["latency_mean_ms"] for r in aivd["runs"]]), abs=1e-3)
    # The emulated nodes have no crashes or slow-downs, and the load is the bench's send times: so the prediction.
    scenario = bench_scenario(3, 10.0, None)
    assert scenario.events == [] and scenario.service_scale == 10.0
    sends = bench_arrivals(scenario, capacity_per_s(scenario, 4), 60, 6)
    second = simulate(scenario, 4, "aivd", 60, 6, max_in_flight=8, arrivals=sends)
    assert aivd["runs"][1]["latency_mean_ms"] == pytest.approx(second.latency_mean_ms, abs=1e-3)
    assert aivd["runs"][1]["latency_mean_ms"] != pytest.approx(simulate(scenario, 4, "aivd", 60, 6, max_in_flight=8).latency_mean_ms)
