from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Stack
from tests.policies import ROLLOUT_POLICY, ROLLOUT_SIMS


@pytest.fixture(scope="module")
def rollout_stack() -> Iterator[Stack]:
    with Stack(ROLLOUT_POLICY, ROLLOUT_SIMS) as stack:
        yield stack


@pytest.fixture
def stack(rollout_stack: Stack) -> Iterator[Stack]:
    rollout_stack.reset()
    yield rollout_stack
