"""The ladder's pure decisions: sleep, wake, stop; schedule windows on a fake clock;
residency evictions; predictive pre-warm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from torpor.ladder import (
    LadderPolicy,
    LadderWorker,
    Resident,
    Transition,
    Window,
    awake_target,
    cron_valid,
    history_prewake,
    pick_evictions,
    plan_ladder,
    schedule_state,
)
from torpor.spec import DeploymentSpec
from torpor.states import WorkerState as S


def worker(
    wid: str,
    state: S = S.HEALTHY,
    idle_since: float | None = 0.0,
    inflight: int = 0,
    transition: Transition = Transition.NONE,
    can_sleep: bool = True,
    outdated: bool = False,
) -> LadderWorker:
    return LadderWorker(wid, state, inflight, idle_since, can_sleep, transition, outdated)


def policy(awake: int = 0, sleep_after: float | None = 2.0, idle: float = 10.0) -> LadderPolicy:
    return LadderPolicy(sleep_after, idle, awake)


def test_idle_worker_sleeps_after_sleep_after_s_not_before() -> None:
    w = [worker("a", idle_since=100.0)]
    early = plan_ladder(w, policy(), 101.0)
    assert early.sleep == () and early.wake_at == 102.0
    assert plan_ladder(w, policy(), 102.0).sleep == ("a",)


def test_busy_min_and_unsleepable_workers_stay_awake() -> None:
    assert plan_ladder([worker("a", inflight=1)], policy(), 1000.0).sleep == ()
    assert plan_ladder([worker("a")], policy(awake=1), 1000.0).sleep == ()
    assert plan_ladder([worker("a", can_sleep=False)], policy(), 1000.0).sleep == ()
    assert plan_ladder([worker("a")], policy(sleep_after=None), 1000.0).sleep == ()


def test_least_recently_used_sleeps_first() -> None:
    ws = [worker("new", idle_since=50.0), worker("old", idle_since=10.0)]
    assert plan_ladder(ws, policy(awake=1), 100.0).sleep == ("old",)


def test_demand_wakes_the_most_recently_used_sleeper() -> None:
    ws = [worker("a", S.SLEEPING, 10.0), worker("b", S.SLEEPING, 20.0)]
    plan = plan_ladder(ws, policy(awake=1, idle=100.0), 21.0)
    assert plan.wake == ("b",) and plan.stop == ()


def test_a_worker_still_going_to_sleep_is_woken_last() -> None:
    ws = [
        worker("going", S.SLEEPING, 30.0, transition=Transition.TO_SLEEP),
        worker("asleep", S.SLEEPING, 10.0),
    ]
    assert plan_ladder(ws, policy(awake=1), 31.0).wake == ("asleep",)
    assert plan_ladder(ws, policy(awake=2), 31.0).wake == ("asleep", "going")


def test_waking_worker_counts_as_awake() -> None:
    ws = [worker("a", S.SLEEPING, 0.0, transition=Transition.TO_WAKE), worker("b", S.SLEEPING)]
    assert plan_ladder(ws, policy(awake=1), 1.0).wake == ()


def test_sleeping_worker_stops_after_idle_timeout_from_last_request() -> None:
    ws = [worker("a", S.SLEEPING, 100.0)]
    assert plan_ladder(ws, policy(idle=10.0), 109.9).stop == ()
    assert plan_ladder(ws, policy(idle=10.0), 109.9).wake_at == 110.0
    assert plan_ladder(ws, policy(idle=10.0), 110.0).stop == (("a", "idle"),)


def test_outdated_sleeper_stops_and_is_never_woken() -> None:
    ws = [worker("old", S.SLEEPING, 0.0, outdated=True)]
    plan = plan_ladder(ws, policy(awake=1), 1.0)
    assert plan.wake == () and plan.stop == (("old", "spec changed"),)


def test_awake_target_adds_buffer_above_demand_within_bounds() -> None:
    assert awake_target(0, 4, 0, 10, buffer_workers=2) == 2
    assert awake_target(5, 4, 0, 10, buffer_workers=1) == 3
    assert awake_target(100, 4, 0, 3, buffer_workers=1) == 3
    assert awake_target(0, 4, 2, 10) == 2


# -- schedule windows (a fake clock: the instants are given) -----------------------------

WEEKDAY_9_TO_5 = [Window("0 9 * * 1-5", 8 * 3600, 3)]
MONDAY = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


def test_window_raises_min_workers_at_its_start_and_lowers_it_at_its_end() -> None:
    before = schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=8, minute=59, second=59))
    assert before.min_workers == 0
    at_start = schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=9))
    assert at_start.min_workers == 3
    assert at_start.next_change == MONDAY.replace(hour=17)
    inside = schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=16, minute=59, second=59))
    assert inside.min_workers == 3
    assert schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=17)).min_workers == 0
    saturday = MONDAY + timedelta(days=5, hours=10)
    assert schedule_state(WEEKDAY_9_TO_5, saturday).min_workers == 0


def test_sleepers_are_prewoken_ahead_of_a_window() -> None:
    lead = schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=8, minute=59, second=45), 30.0)
    assert (lead.min_workers, lead.prewake) == (0, 3)
    assert lead.next_change == MONDAY.replace(hour=9)
    far = schedule_state(WEEKDAY_9_TO_5, MONDAY.replace(hour=8), 30.0)
    assert far.prewake == 0
    assert far.next_change == MONDAY.replace(hour=8, minute=59, second=30)


def test_seconds_field_and_overlapping_windows() -> None:
    windows = [Window("* * * * * */10", 5, 1), Window("* * * * * */20", 5, 2)]
    at = MONDAY.replace(second=21)
    assert schedule_state(windows, at).min_workers == 2
    assert schedule_state(windows, MONDAY.replace(second=15)).min_workers == 0


def test_cron_and_windows_are_validated_in_the_spec() -> None:
    assert cron_valid("55 8 * * 1-5") and cron_valid("* * * * * */5")
    assert not cron_valid("every day") and not cron_valid("* * *")
    base = {"name": "d", "model": "m", "max_workers": 2}
    with pytest.raises(ValidationError, match="cron"):
        DeploymentSpec.model_validate(
            base | {"schedule": [{"cron": "nope", "duration_s": 60, "min_workers": 1}]}
        )
    with pytest.raises(ValidationError, match="max_workers"):
        DeploymentSpec.model_validate(
            base | {"schedule": [{"cron": "0 9 * * *", "duration_s": 60, "min_workers": 3}]}
        )
    for bad in ({"sleep_after_s": -1}, {"sleep_level": 3}, {"buffer_workers": -1}):
        with pytest.raises(ValidationError):
            DeploymentSpec.model_validate(base | bad)
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate_json('{"name": "d", "model": "m", "sleep_after_s": NaN}')


# -- residency ---------------------------------------------------------------------------


def resident(
    wid: str,
    dep: str,
    state: S = S.HEALTHY,
    priority: int = 0,
    idle: float = 0.0,
    inflight: int = 0,
    devices: int = 1,
    spare: int = 1,
) -> Resident:
    return Resident(wid, dep, state, inflight, priority, idle, devices, spare)


def test_sleeping_evicted_before_idle_lower_priority_before_higher() -> None:
    rs = [
        resident("idle-low", "x", priority=-1, idle=5.0),
        resident("idle-high", "y", priority=5, idle=1.0),
        resident("asleep", "z", S.SLEEPING, priority=9, idle=50.0),
    ]
    assert pick_evictions(rs, 1, 0, "me") == ("asleep",)
    assert pick_evictions(rs, 2, 0, "me") == ("asleep", "idle-low")
    # An idle worker of higher priority than the starving deployment is kept.
    assert pick_evictions(rs, 3, 0, "me") == ()
    assert pick_evictions(rs, 3, 5, "me") == ("asleep", "idle-low", "idle-high")


def test_never_busy_never_below_min_never_own_and_all_or_nothing() -> None:
    assert pick_evictions([resident("busy", "x", inflight=1)], 1, 0, "me") == ()
    assert pick_evictions([resident("min", "x", spare=0)], 1, 0, "me") == ()
    assert pick_evictions([resident("mine", "me", S.SLEEPING)], 1, 0, "me") == ()
    two = [resident("a", "x", spare=1, idle=1.0), resident("b", "x", spare=1, idle=2.0)]
    assert pick_evictions(two, 2, 0, "me") == ()  # the second would go below min_workers
    assert pick_evictions(two, 1, 0, "me") == ("a",)  # least recently used


# -- predictive pre-warm -----------------------------------------------------------------


def test_history_prewake_before_the_usual_hour() -> None:
    first = [MONDAY.replace(hour=9, minute=3) - timedelta(weeks=k) for k in (1, 2, 3)]
    now = MONDAY.replace(hour=8, minute=59)
    assert history_prewake(first, now, lead_s=120.0)
    assert not history_prewake(first, MONDAY.replace(hour=8, minute=30), lead_s=120.0)
    assert not history_prewake(first[:1], now, lead_s=120.0)  # one week is no habit
