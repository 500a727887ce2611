"""EvalWindow keeps its failure count incrementally; it must always equal a recount."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.evals.windows import EvalWindow, EvalWindows


@given(
    size=st.integers(min_value=1, max_value=20),
    steps=st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=5)), max_size=80),
    resize=st.integers(min_value=1, max_value=20),
)
def test_incremental_fail_rate_matches_a_recount(size: int, steps: list[tuple[bool, float]], resize: int) -> None:
    window = EvalWindow(size, max_age_s=10.0)
    now = 0.0
    for failed, advance in steps:
        now += advance
        window.add(failed, now)
        window.prune(now)
        recount = sum(1 for _, f in window.outcomes if f)
        assert window.failed == recount
        assert len(window.outcomes) <= size
        if window.outcomes:
            assert window.fail_rate() == recount / len(window.outcomes)
    window.trim(resize)
    assert window.failed == sum(1 for _, f in window.outcomes if f)


def test_fail_rate_over_the_last_outcomes_and_age_limit() -> None:
    now = [0.0]
    windows = EvalWindows(size=10, max_age_s=60, clock=lambda: now[0])
    for failed in (True, True, False, False):
        windows.record(("m", "c", "e"), failed)
    window = windows.get(("m", "c", "e"))
    assert window is not None
    assert window.fail_rate() == 0.5 and window.fail_rate(last=2) == 0.0 and window.seen == 4
    now[0] = 61
    assert windows.get(("m", "c", "e")) is not None and window.count() == 0 and window.fail_rate() == 0.0
