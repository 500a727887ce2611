"""One pass over the capture: each primary record replayed under the new policy and the baseline (another policy,
or what the record says happened live), the difference counted. Nothing but counters outlives a record."""

from __future__ import annotations

from typing import Any

from gateway.policy.loader import LoadedPolicy
from gateway.replay.diff import ReplayDiff
from gateway.replay.features import features_for
from gateway.replay.fidelity import Fidelity, PolicyGaps
from gateway.replay.reader import Skipped, read_records
from gateway.replay.side import PolicyReplayer, live_side

LIVE = "live"


def replay_files(paths: list[str], policy: LoadedPolicy, baseline: LoadedPolicy | None = None) -> dict[str, Any]:
    """The report (the ``--json`` shape) of replaying the records in ``paths`` under ``policy``, against
    ``baseline`` or, without one, against the recorded outcomes."""
    new = PolicyGaps("new", PolicyReplayer(policy))
    old = PolicyGaps("baseline", PolicyReplayer(baseline)) if baseline is not None else None
    sides = [new] if old is None else [old, new]
    fidelity = Fidelity(sides, check=old or new)
    diff = ReplayDiff()
    skipped = Skipped()
    replay_new = new.replayer.replay
    for record in read_records(paths, skipped):
        features = features_for(record)
        after, after_inexact = replay_new(record, features)
        new.observe(record, after_inexact)
        fidelity.observe(record)
        live = live_side(record)
        if old is None:
            fidelity.compare(record, after, after_inexact, live)
            if live is None:
                fidelity.live_unrouted += 1
                continue
            before, before_inexact = live, False
        else:
            before, before_inexact = old.replayer.replay(record, features)
            old.observe(record, before_inexact)
            fidelity.compare(record, before, before_inexact, live)
        diff.add(record.request_id, before, after, before_inexact or after_inexact)
    return {
        "total": diff.total,
        "changed": diff.changed,
        "changed_share": round(diff.changed_share, 6),
        "moves": diff.moves_json(),
        "new_errors": diff.new_errors_json(),
        "reproduced": fidelity.reproduced_json(),
        "not_reproducible": fidelity.not_reproducible_json(),
        "skipped": {
            "invalid": skipped.invalid,
            "shadow": skipped.shadow,
            "live_unrouted": fidelity.live_unrouted,
            "first_invalid_lines": skipped.first_invalid,
        },
        "notes": fidelity.notes(),
        "baseline": baseline.path if baseline is not None else LIVE,
        "policy": policy.path,
        "versions": {"policy": policy.version, "baseline": baseline.version if baseline is not None else None},
    }
