"""The discrete-event simulator and `aivd simulate`: reproducibility, conservation of tasks, capacity, heterogeneity."""

import csv
import json
import time

import numpy as np
import pytest
import simpy
from typer.testing import CliRunner

from aivd.cli.simulate import simulate_app
from aivd.scheduling import POLICIES
from aivd.sim import SCENARIOS, capacity_per_s, simulate, with_load
from aivd.sim.engine import Link, Simulation, arrival_times
from aivd.sim.scenarios import Arrivals, LinkProfile, NodeEvent


def test_identical_seeds_give_identical_results_and_other_seeds_do_not():
    first, second = (simulate(SCENARIOS[3], 6, "aivd", 1500, seed=11) for _ in range(2))
    assert first == second
    other = simulate(SCENARIOS[3], 6, "aivd", 1500, seed=12)
    assert other.latency_mean_ms != first.latency_mean_ms


@pytest.mark.parametrize("scenario", [1, 2, 3])
def test_no_task_is_lost_even_with_crashes(scenario):
    for policy in ("rr", "jsq", "ect"):
        result = simulate(SCENARIOS[scenario], 4, policy, 800, seed=1)
        assert result.lost == 0 and result.completed == 800 == sum(result.assigned.values())
        assert result.latency_p50_ms <= result.latency_p95_ms <= result.latency_p99_ms
        assert 0 < result.comm_latency_mean_ms < result.latency_mean_ms


def test_capacity_bound_is_the_sum_of_service_rates():
    # Node mix gpu, ipc, arm, ipc: 1/0.08 + 1/0.15 + 1/0.40 + 1/0.15
    assert capacity_per_s(SCENARIOS[1], 4) == pytest.approx(12.5 + 6.667 + 2.5 + 6.667, abs=0.01)


def test_throughput_never_exceeds_the_capacity_bound_at_saturation():
    saturated = with_load(SCENARIOS[1], 2.0)
    for policy in POLICIES:
        result = simulate(saturated, 4, policy, 800, seed=3)
        assert result.capacity_fraction <= 1.0, policy
        assert all(0 <= u <= 1.0 + 1e-9 for u in result.utilisation.values()), policy


def test_late_binding_keeps_every_node_within_its_cap_and_loses_nothing():
    from aivd.sim.engine import Simulation

    run = Simulation(with_load(SCENARIOS[1], 1.5), 4, "jsq", 1500, seed=1, max_in_flight=2)
    result = run.run()
    assert result.lost == 0 and result.completed == 1500
    assert max(node.peak_in_flight for node in run.nodes) == 2
    # Held at the dispatcher instead of queued behind a slow board, saturation throughput rises.
    unbounded = simulate(with_load(SCENARIOS[1], 1.5), 4, "jsq", 1500, seed=1)
    assert result.throughput_per_s > 1.2 * unbounded.throughput_per_s


def test_under_a_cap_aivd_holds_work_for_the_fast_nodes_instead_of_filling_the_slow_ones():
    # The Ray bench's setup (8 nodes of scenario 3 at time scale 10, cap 8) on its burstiest seed: offered only the
    # nodes with room, aivd filled the ARM boards (n2, n6) to the cap during the burst, 8 x 4 s of work that drained
    # alone at its end; holding the task for a node that finishes it sooner keeps them at 2.
    from aivd.scheduling import AivdConfig, PolicyConfig
    from aivd.sim.engine import Simulation

    scenario = SCENARIOS[3].model_copy(update={"service_scale": 10.0, "events": []})
    sends = arrival_times(scenario.arrivals, scenario.arrivals.load * capacity_per_s(scenario, 8), 300, np.random.default_rng(1))
    runs = {}
    for hold in (True, False):
        run = Simulation(scenario, 8, "aivd", 300, 1, PolicyConfig(aivd=AivdConfig(hold=hold)), max_in_flight=8, arrivals=sends)
        runs[hold] = run.run(), [node.peak_in_flight for node in run.nodes]
    (held, held_peaks), (filled, filled_peaks) = runs[True], runs[False]
    assert held.lost == filled.lost == 0
    assert filled_peaks[2] == filled_peaks[6] == 8 and held_peaks[2] <= 2 and held_peaks[6] <= 2
    assert held.throughput_per_s > 1.2 * filled.throughput_per_s and held.latency_p99_ms < 0.5 * filled.latency_p99_ms
    assert held.latency_mean_ms < filled.latency_mean_ms


def test_under_a_small_cap_aivd_stops_holding_once_the_backlog_would_keep_the_fast_nodes_busy(monkeypatch):
    # Scenario 3 at saturation with 4 in flight per node: a fast node at the cap finishes a new task soonest, but holding
    # every task for it idled the slow nodes (0.61 of capacity on 16 nodes). With tasks enough waiting, the best node
    # with room takes the task, and aivd does as well as the policies that never hold.
    from aivd.scheduling import AivdScore

    saturated = with_load(SCENARIOS[3], 1.5)
    aivd, ect = (simulate(saturated, 8, policy, 3000, seed=0, max_in_flight=4) for policy in ("aivd", "ect"))
    assert aivd.lost == 0 and aivd.throughput_per_s > 0.97 * ect.throughput_per_s
    monkeypatch.setattr(AivdScore, "worth_the_wait", lambda *args: None)  # hold whatever the backlog
    assert simulate(saturated, 8, "aivd", 3000, seed=0, max_in_flight=4).throughput_per_s < 0.9 * aivd.throughput_per_s


def test_binding_work_late_lifts_saturation_where_early_binding_left_the_last_nodes_draining_alone():
    # Scenario 3 at saturation: bound on arrival, each node's queue was tens of seconds of work estimated on rates and
    # links that changed before it ran, and the last nodes drained alone. Held at the dispatcher past 4 s of work
    # beyond each link's round trip (the default), the same run ends sooner.
    from aivd.scheduling import AivdConfig, PolicyConfig

    saturated = with_load(SCENARIOS[3], 1.5)
    late = simulate(saturated, 8, "aivd", 3000, seed=0)
    early = simulate(saturated, 8, "aivd", 3000, seed=0, policy_config=PolicyConfig(aivd=AivdConfig(bind_ahead_s=None)))
    assert late.lost == early.lost == 0
    assert late.reachable_fraction > early.reachable_fraction + 0.01 and late.reachable_fraction > 0.93


def test_given_arrivals_replace_the_scenarios_draw_and_keep_the_work_per_task():
    from aivd.sim.engine import Simulation

    own = Simulation(SCENARIOS[1], 4, "jsq", 50, seed=2)
    given = Simulation(SCENARIOS[1], 4, "jsq", 50, seed=2, arrivals=own.arrivals * 2)
    assert np.array_equal(given.arrivals, own.arrivals * 2) and np.array_equal(given.work, own.work)
    for bad in (own.arrivals[:-1], own.arrivals[::-1], own.arrivals - 1.0):
        with pytest.raises(ValueError, match="50 non-negative times in order"):
            Simulation(SCENARIOS[1], 4, "jsq", 50, seed=2, arrivals=bad)


def test_reachable_bound_counts_the_links_crashes_and_slow_downs():
    normal = simulate(with_load(SCENARIOS[1], 1.5), 8, "ect", 2000, seed=0)
    assert normal.reachable_per_s == pytest.approx(normal.capacity_per_s, rel=0.02)  # a fast LAN, no events
    harsh = simulate(with_load(SCENARIOS[3], 1.5), 8, "ect", 2000, seed=0)
    no_events = simulate(with_load(SCENARIOS[3].model_copy(update={"events": []}), 1.5), 8, "ect", 2000, seed=0)
    # The crash and the 3x slow-down take capacity away; the bound sees it, the nominal capacity does not.
    assert harsh.reachable_per_s < no_events.reachable_per_s < harsh.capacity_per_s
    for result in (normal, harsh):
        # Mean service times make it a bound up to the luck of the lognormal draws.
        assert result.throughput_per_s <= result.reachable_per_s * 1.02


@pytest.mark.parametrize("policy", ["jsq", "aivd", "ect"])
def test_a_fast_node_gets_more_work_than_a_slow_one(policy):
    result = simulate(SCENARIOS[1], 4, policy, 1500, seed=2)
    gpu, arm = result.assigned["n0"], result.assigned["n2"]  # service means 0.08 s and 0.40 s
    assert gpu > 2 * arm


def test_round_robin_ignores_speed_and_loses_throughput_at_saturation():
    saturated = with_load(SCENARIOS[1], 1.5)
    rr, ect = (simulate(saturated, 4, p, 1500, seed=4) for p in ("rr", "ect"))
    assert max(rr.assigned.values()) - min(rr.assigned.values()) <= 1
    assert ect.throughput_per_s > rr.throughput_per_s


def test_a_crash_is_seen_through_missed_heartbeats():
    scenario = SCENARIOS[1].model_copy(update={"events": [NodeEvent(kind="crash", node=0, start_frac=0.3, duration_frac=0.4)]})
    sim = Simulation(scenario, 4, "jsq", 1000, seed=5)
    sim.start()
    sim.env.run(until=0.5 * sim.expected_s)
    states = {s.node_id: s for s in sim.states(sim.env.now)}
    assert not states["n0"].healthy and states["n0"].missed_heartbeats >= scenario.unhealthy_after_missed
    assert all(states[n].healthy for n in ("n1", "n2", "n3"))


def test_bursty_arrivals_keep_the_mean_rate_but_vary_more():
    poisson = arrival_times(Arrivals(kind="poisson", load=1), 50.0, 20_000, np.random.default_rng(0))
    bursty = arrival_times(Arrivals(kind="bursty", load=1), 50.0, 20_000, np.random.default_rng(0))
    for times in (poisson, bursty):
        assert len(times) / times[-1] == pytest.approx(50.0, rel=0.1)
        assert np.all(np.diff(times) >= 0)
    counts = [np.bincount(t.astype(int)) for t in (poisson, bursty)]
    assert counts[1].var() / counts[1].mean() > 3 * counts[0].var() / counts[0].mean()


def test_link_values_depend_on_the_seed_not_on_the_order_of_queries():
    profile = LinkProfile(kind="degraded", bandwidth_bps=1e6, latency_s=0.05, sigma=0.5, spike_prob=0.3, spike_factor=5)
    forward, backward = (Link(simpy.Environment(), profile, np.random.default_rng(9)) for _ in range(2))
    times = [0.5, 3.2, 7.9, 12.0]
    assert [forward.at(t) for t in times] == [backward.at(t) for t in reversed(times)][::-1]
    latencies = [forward.at(float(t))[1] for t in range(200)]
    assert max(latencies) > 5 * min(latencies)  # spikes and fluctuation, not a constant


def test_a_transfer_goes_at_each_epochs_bandwidth_in_turn():
    profile = LinkProfile(kind="degraded", bandwidth_bps=1e6, latency_s=0.05, sigma=0.8, spike_prob=0.3, spike_factor=8)
    link = Link(simpy.Environment(), profile, np.random.default_rng(4))
    rates = [link.at(float(epoch))[0] for epoch in range(40)]
    # Within one epoch: the payload at that epoch's rate.
    assert link.transfer_s(3.25, rates[3] * 0.5) == pytest.approx(0.5)
    # Across epochs: the rest of the first epoch at its rate, then whole epochs, then the remainder of the last.
    payload = rates[3] * 0.75 + rates[4] + rates[5] * 0.1
    assert link.transfer_s(3.25, payload) == pytest.approx(0.75 + 1.0 + 0.1)
    # So a transfer started in a spike takes far less than the payload at the spike's rate once the spike ends.
    spike = next(epoch for epoch in range(39) if rates[epoch] < rates[epoch + 1] / 5)
    big = rates[spike + 1] * 0.5 + rates[spike] * 0.5
    assert link.transfer_s(spike + 0.5, big) < 0.5 * big / rates[spike]


@pytest.mark.integration
def test_ten_thousand_tasks_simulate_in_seconds():
    start = time.perf_counter()
    result = simulate(SCENARIOS[3], 16, "aivd", 10_000, seed=0)
    elapsed = time.perf_counter() - start
    print(f"10,000 tasks, scenario 3, 16 nodes, aivd: {elapsed:.2f} s")
    assert result.lost == 0 and result.completed == 10_000


def test_cli_prints_one_json_object_per_the_issue():
    result = CliRunner().invoke(simulate_app, ["--scenario", "2", "--nodes", "4", "--policies", "rr,jsq,aivd",
                                               "--tasks", "400", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"scenario", "nodes", "capacity_per_s", "policies"}
    assert (report["scenario"], report["nodes"]) == (2, 4) and report["capacity_per_s"] == pytest.approx(28.333, abs=0.01)
    assert list(report["policies"]) == ["rr", "jsq", "aivd"]
    for summary in report["policies"].values():
        assert summary["lost"] == 0 and summary["completed"] == 400
        assert 0 < summary["throughput_per_s"] <= report["capacity_per_s"]
        assert summary["latency_mean_ms"] > 0 and summary["latency_p99_ms"] >= summary["latency_p50_ms"]
    again = CliRunner().invoke(simulate_app, ["--scenario", "2", "--nodes", "4", "--policies", "rr,jsq,aivd",
                                              "--tasks", "400", "--seed", "3", "--json"])
    assert again.output == result.output


def test_cli_rejects_unknown_policies():
    result = CliRunner().invoke(simulate_app, ["--policies", "rr,fifo", "--json"])
    assert result.exit_code == 2 and "fifo" in result.output


@pytest.mark.integration
def test_sweep_writes_csv_and_figures(tmp_path):
    result = CliRunner().invoke(simulate_app, ["sweep", "--out", str(tmp_path), "--scenarios", "1,3", "--nodes", "2,4",
                                               "--policies", "rr,ect", "--tasks", "150"])
    assert result.exit_code == 0, result.output
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # 2 scenarios x 2 node counts x (2 policies + 3 pipelines)
    assert len(rows) == 20 and {r["run"] for r in rows} == {"rr", "ect", "pipeline:cloud-only", "pipeline:edge-cloud",
                                                            "pipeline:aivd"}
    assert all(r["lost"] == "0" for r in rows)
    for name in ("scenario1_policies", "scenario1_pipelines", "scenario3_policies", "scenario3_pipelines"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
