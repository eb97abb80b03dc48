"""Each scheduling policy's defining behaviour, on hand-made node states."""

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from aivd.scheduling import (
    POLICIES,
    AivdConfig,
    AivdScore,
    NodeState,
    PolicyConfig,
    Task,
    expected_completion_s,
    make_policy,
    waits_for_room,
)
from aivd.scheduling.policies import PAPER_WEIGHTS

TASK = Task(0, 84_000)


def node(node_id, **kw):
    base = dict(cpu_idle=0.5, queue_len=2, queue_bound=8, bandwidth_bps=10e6, latency_s=0.01, service_rate=5.0)
    return NodeState(node_id, **{**base, **kw})


def rng(seed=0):
    return np.random.default_rng(seed)


def test_registry_names_and_unknown_policy():
    assert set(POLICIES) == {"rr", "sra", "random", "jsq", "p2c", "aivd", "aivd-paper", "ect"}
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(KeyError, match="known: rr"):
        make_policy("fifo")


def test_node_state_validates():
    with pytest.raises(ValueError):
        node("a", cpu_idle=1.5)
    with pytest.raises(ValueError):
        node("a", bandwidth_bps=0)
    with pytest.raises(ValidationError):
        AivdConfig(gamma=1.0)


def test_round_robin_cycles_and_skips_unhealthy():
    states = [node("a"), node("b", healthy=False), node("c")]
    policy, r = make_policy("rr"), rng()
    assert [policy.choose(TASK, states, r) for _ in range(5)] == ["a", "c", "a", "c", "a"]


def test_sra_picks_most_idle_cpu():
    states = [node("a", cpu_idle=0.2), node("b", cpu_idle=0.9, queue_len=50), node("c", cpu_idle=0.5)]
    assert make_policy("sra").choose(TASK, states, rng()) == "b"


def test_jsq_picks_shortest_queue_and_breaks_ties_at_random():
    states = [node("a", queue_len=3), node("b", queue_len=1), node("c", queue_len=4)]
    assert make_policy("jsq").choose(TASK, states, rng()) == "b"
    tied = [node("a", queue_len=1), node("b", queue_len=1), node("c", queue_len=4)]
    picks = Counter(make_policy("jsq").choose(TASK, tied, rng(s)) for s in range(200))
    assert set(picks) == {"a", "b"} and min(picks.values()) > 60


def test_p2c_picks_the_shorter_of_two_random_nodes():
    states = [node("a", queue_len=0), node("b", queue_len=5), node("c", queue_len=9)]
    policy, r = make_policy("p2c"), rng(1)
    picks = Counter(policy.choose(TASK, states, r) for _ in range(3000))
    # The longest queue is never chosen; the middle one only when paired with the longest: 1/3 of pairs.
    assert picks["c"] == 0
    assert picks["b"] / 3000 == pytest.approx(1 / 3, abs=0.04)


def test_random_spreads_over_healthy_nodes():
    states = [node("a"), node("b"), node("c", healthy=False)]
    picks = Counter(make_policy("random").choose(TASK, states, rng(s)) for s in range(300))
    assert set(picks) == {"a", "b"}


def test_ect_prefers_the_fast_link_for_big_payloads_and_the_fast_node_for_small():
    fast_link = node("fast_link", bandwidth_bps=100e6, service_rate=4.0)
    fast_node = node("fast_node", bandwidth_bps=1e6, service_rate=10.0)
    policy = make_policy("ect")
    assert policy.choose(Task(1, 2_000_000), [fast_node, fast_link], rng()) == "fast_link"
    assert policy.choose(Task(2, 1_000), [fast_node, fast_link], rng()) == "fast_node"


def test_aivd_prefers_idle_short_queue_fast_link():
    good = node("good", cpu_idle=1.0, queue_len=0, bandwidth_bps=20e6, latency_s=0.005)
    bad = node("bad", cpu_idle=0.1, queue_len=6, bandwidth_bps=5e6, latency_s=0.05)
    policy = AivdScore()
    scores = policy.raw_scores(TASK, [good, bad])
    assert scores[0] == pytest.approx(sum(AivdConfig().model_dump(include={"a", "b", "c", "d", "e"}).values()))
    assert scores[1] < scores[0]
    assert policy.choose(TASK, [bad, good], rng()) == "good"


def test_aivd_weighs_speed_and_link_where_the_paper_score_sees_only_queues():
    # A GPU module with three tasks in flight finishes a new one before an ARM board with one (0.32 s against 0.8 s).
    fast = node("fast", queue_len=3, service_rate=12.5)
    slow = node("slow", queue_len=1, service_rate=2.5)
    assert make_policy("aivd").choose(TASK, [slow, fast], rng()) == "fast"
    assert make_policy("aivd-paper").choose(TASK, [slow, fast], rng()) == "slow"
    # The same node behind a link that needs 8 s for this payload is the worse choice.
    behind_a_slow_link = node("fast", queue_len=3, service_rate=12.5, bandwidth_bps=10e3)
    assert make_policy("aivd").choose(TASK, [slow, behind_a_slow_link], rng()) == "slow"
    # C is the best expected completion over the node's own: 1 for the fastest, their ratio for the other.
    config = AivdConfig(a=0, b=0, c=1, d=0, e=0)
    ratio = expected_completion_s(TASK, fast) / expected_completion_s(TASK, slow)
    assert AivdScore(config).raw_scores(TASK, [fast, slow]) == pytest.approx([1.0, ratio])


def test_aivd_paper_is_the_paper_score_with_its_weights_and_weights_go_to_the_policy_named():
    paper = make_policy("aivd-paper")
    assert isinstance(paper, AivdScore) and paper.config == PAPER_WEIGHTS and PAPER_WEIGHTS.c == 0
    mine = AivdConfig(a=1, b=0, c=0, d=0, e=0)
    assert PolicyConfig.with_weights("aivd-paper", mine) == PolicyConfig(aivd_paper=mine)
    assert PolicyConfig.with_weights("aivd", mine) == PolicyConfig(aivd=mine)
    assert PolicyConfig.with_weights("ect", mine) == PolicyConfig.with_weights("aivd", None) == PolicyConfig()


def test_aivd_penalty_turns_the_choice_away_from_overloaded_and_anomalous_nodes():
    config = AivdConfig(a=1, b=0, c=0, d=0, e=0, eta=0, gamma=0.5)
    slightly_worse = node("ok", cpu_idle=0.7)
    for bad in (node("over", cpu_idle=0.9, queue_len=9), node("flaky", cpu_idle=0.9, missed_heartbeats=1),
                node("errors", cpu_idle=0.9, errors=2)):
        assert AivdScore(config).choose(TASK, [bad, slightly_worse], rng()) == "ok"
        # Without the penalty condition the same node wins.
        healthy_twin = node(bad.node_id, cpu_idle=0.9)
        assert AivdScore(config).choose(TASK, [healthy_twin, slightly_worse], rng()) == bad.node_id


def test_aivd_counts_overload_in_time_by_default_and_in_tasks_in_the_paper_form():
    fast = node("fast", queue_len=10, service_rate=12.5)  # 0.8 s of work in flight
    slow = node("slow", queue_len=5, service_rate=2.5)  # 2 s; the bound is 8 tasks at the mean 7.5/s = 1.07 s
    in_time, in_tasks = AivdScore(), AivdScore(AivdConfig(overload="queue"))
    mean_rate = 7.5
    assert not in_time.penalised(fast, mean_rate) and in_time.penalised(slow, mean_rate)
    assert in_tasks.penalised(fast, mean_rate) and not in_tasks.penalised(slow, mean_rate)


def test_aivd_smoothing_delays_the_reaction_to_a_change():
    config = AivdConfig(a=1, b=0, c=0, d=0, e=0, eta=0.8, max_skips=1000)
    before = [node("x", cpu_idle=1.0), node("y", cpu_idle=0.5)]
    after = [node("x", cpu_idle=0.4), node("y", cpu_idle=0.5)]
    smoothed, unsmoothed = AivdScore(config), AivdScore(config.model_copy(update={"eta": 0.0}))
    for policy in (smoothed, unsmoothed):
        assert policy.choose(TASK, before, rng()) == "x"
    assert unsmoothed.choose(TASK, after, rng()) == "y"
    # Smoothed: x's score is 0.8*1.0 + 0.2*0.4 = 0.88 > 0.5, so it keeps x for a few decisions before switching.
    picks = [smoothed.choose(TASK, after, rng()) for _ in range(10)]
    assert picks[0] == "x" and picks[-1] == "y"


def test_aivd_floor_stops_starvation():
    config = AivdConfig(max_skips=5, eta=0)
    states = [node("best", cpu_idle=1.0, queue_len=0), node("worst", cpu_idle=0.0, queue_len=7)]
    policy = AivdScore(config)
    picks = [policy.choose(TASK, states, rng()) for _ in range(18)]
    assert picks.count("worst") == 3 and picks[5] == "worst"


def test_aivd_holds_for_a_full_fast_node_rather_than_queue_behind_a_slow_one_with_room():
    # At the cap: a GPU module with 8 in flight finishes a new task in 0.72 s, an ARM board with 2 in 1.2 s. Offered
    # only the nodes with room (the old way, and still the other policies'), the ARM board got it; aivd now answers
    # None: hold the task until the GPU module has a slot.
    full_fast = node("fast", queue_len=8, service_rate=12.5, room=False)
    slow = node("slow", queue_len=2, service_rate=2.5)
    policy = make_policy("aivd")
    assert waits_for_room(policy) and policy.choose(TASK, [full_fast, slow], rng()) is None
    assert policy.choose(TASK, [slow], rng()) == "slow"  # the old offer: only the nodes with room
    assert not any(waits_for_room(make_policy(name)) for name in POLICIES if name != "aivd")
    assert not waits_for_room(AivdScore(AivdConfig(hold=False))) and not PAPER_WEIGHTS.hold
    assert AivdScore(AivdConfig(hold=False)).choose(TASK, [full_fast, slow], rng()) == "fast"  # not held: sent
    # When the ARM board would finish first (it is idle: 0.4 s), it gets the task at once.
    assert policy.choose(TASK, [full_fast, node("slow", queue_len=0, service_rate=2.5)], rng()) == "slow"


def test_aivd_stops_holding_for_a_full_node_when_enough_tasks_wait_to_keep_the_faster_nodes_busy():
    # The GPU module at the cap finishes a task in 0.72 s, the ARM board with room in 1.2 s + link: 0.48 s later, in
    # which the GPU module (12.5/s) gets through 6 tasks. One task waiting: hold it; 7 waiting: the ARM board takes it.
    full_fast = node("fast", queue_len=8, service_rate=12.5, room=False)
    slow = node("slow", queue_len=2, service_rate=2.5)
    assert make_policy("aivd").choose(Task(0, 84_000, waiting=1), [full_fast, slow], rng()) is None
    assert make_policy("aivd").choose(Task(0, 84_000, waiting=7), [full_fast, slow], rng()) == "slow"
    # A node full past bind_ahead_s has seconds of work: a slower node is held for, whatever the backlog.
    loaded = node("fast", queue_len=60, service_rate=12.5)
    assert make_policy("aivd").choose(Task(0, 84_000, waiting=10_000), [loaded, node("slow", queue_len=1, service_rate=0.15)],
                                      rng()) is None


def test_aivd_binds_work_to_a_node_only_a_few_seconds_ahead_of_its_link():
    # 60 tasks at 12.5/s is 4.8 s of work, past the link's round trip (2 x 10 ms + 84 kB at 10 MB/s) + 4 s: full,
    # though the dispatcher has no cap; 50 (4 s) is not. A slow board with one task would finish a new one in 13 s:
    # the task waits for the fast node rather than queue there.
    policy = AivdScore()
    assert not policy.has_room(TASK, node("fast", queue_len=60, service_rate=12.5))
    assert policy.has_room(TASK, node("fast", queue_len=50, service_rate=12.5))
    slow = node("slow", queue_len=1, service_rate=0.15)
    assert policy.choose(TASK, [node("fast", queue_len=60, service_rate=12.5), slow], rng()) is None
    assert policy.choose(TASK, [node("fast", queue_len=49, service_rate=12.5), slow], rng()) == "fast"
    # A node with one task is never full by time (a slow board must get work at all), and a slow link buys time.
    assert policy.has_room(TASK, node("slow", queue_len=1, service_rate=0.1))
    assert policy.has_room(TASK, node("far", queue_len=45, service_rate=10.0, latency_s=0.3))
    assert not policy.has_room(TASK, node("near", queue_len=45, service_rate=10.0, latency_s=0.01))
    assert AivdScore(AivdConfig(bind_ahead_s=None)).has_room(TASK, node("fast", queue_len=500, service_rate=12.5))
    assert not AivdScore(AivdConfig(bind_ahead_s=None)).has_room(TASK, node("fast", queue_len=8, room=False))


def test_aivd_held_decisions_pass_no_node_over_and_a_full_node_is_never_forced():
    # On Ray the router asks again at every backoff while a task is held; those decisions must not push the slow
    # node past the floor, or it would be forced to take work that a fast node finishes first.
    policy = AivdScore(AivdConfig(max_skips=3))
    full_fast, slow = node("fast", queue_len=8, service_rate=12.5, room=False), node("slow", queue_len=2, service_rate=2.5)
    assert [policy.choose(TASK, [full_fast, slow], rng()) for _ in range(10)] == [None] * 10
    with_room = node("fast", queue_len=7, service_rate=12.5)
    assert [policy.choose(TASK, [with_room, slow], rng()) for _ in range(4)] == ["fast"] * 3 + ["slow"]
    # Passed over 3 times but full: not starved, so not forced.
    starved_but_full = node("slow", queue_len=8, service_rate=2.5, room=False)
    for _ in range(3):
        policy.choose(TASK, [with_room, node("slow", queue_len=2, service_rate=2.5)], rng())
    assert policy.choose(TASK, [with_room, starved_but_full], rng()) == "fast"


def test_aivd_scores_come_with_the_same_choices_and_rank_the_nodes():
    config = AivdConfig(max_skips=4)
    generator = rng(3)
    runs = [[node(f"n{i}", queue_len=int(q), cpu_idle=float(u)) for i, (q, u) in enumerate(zip(generator.integers(0, 9, 4),
                                                                                               generator.random(4)))]
            for _ in range(40)]
    plain, scored = AivdScore(config), AivdScore(config)
    plain_rng, scored_rng = rng(5), rng(5)
    for states in runs:  # smoothing and the starvation floor carry over: the two must stay in step throughout
        chosen, scores = scored.choose_scored(TASK, states, scored_rng)
        assert chosen == plain.choose(TASK, states, plain_rng)
        assert set(scores) == {s.node_id for s in states}
    fresh = AivdScore(AivdConfig(a=0, b=1, c=0, d=0, e=0))
    queues = [node("short", queue_len=0), node("mid", queue_len=3), node("long", queue_len=6), node("down", healthy=False)]
    chosen, scores = fresh.choose_scored(TASK, queues, rng())
    assert chosen == "short" and list(scores) == ["short", "mid", "long"]  # an unhealthy node is not scored
    assert scores["short"] > scores["mid"] > scores["long"] and scores["short"] == pytest.approx(1.0)


def test_every_policy_is_deterministic_for_a_seed():
    states = [node(f"n{i}", cpu_idle=i / 10, queue_len=i % 3, latency_s=0.01 * (i + 1)) for i in range(6)]
    for name in POLICIES:
        runs = [[make_policy(name, PolicyConfig()).choose(Task(t, 84_000), states, r) for t in range(50)]
                for r in (rng(7), rng(7))]
        assert runs[0] == runs[1], name
