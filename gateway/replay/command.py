"""``llm-gateway replay``: load the policies, check the capture paths, replay, print, choose the exit code.

Exit codes: 0 the report is printed (and the changed share is within ``--max-changed``), 1 the changed share is over
``--max-changed``, 2 a bad invocation: a policy that does not load (its ``PATH:LINE:COL`` errors, as ``check``
prints them), a capture path that cannot be read, or no primary record to compare.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.policy import PolicyError, load_policy
from gateway.policy.loader import LoadedPolicy
from gateway.replay.reader import CaptureUnreadable, check_readable
from gateway.replay.render import render_text
from gateway.replay.run import replay_files


def run_replay(args: argparse.Namespace) -> int:
    policies: list[LoadedPolicy | None] = []
    failed = False
    for path in (args.policy, args.baseline):
        try:
            policies.append(load_policy(path) if path is not None else None)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            failed = True
    try:
        for path in args.captures:
            check_readable(path)
    except CaptureUnreadable as exc:
        print(f"llm-gateway replay: {exc}", file=sys.stderr)
        failed = True
    if failed:
        return 2
    policy, baseline = policies
    assert policy is not None
    report = replay_files(list(args.captures), policy, baseline)
    if not report["total"]:
        skipped = report["skipped"]
        print(
            f"llm-gateway replay: no primary record to compare in {', '.join(args.captures)} "
            f"({skipped['invalid']} invalid lines, {skipped['shadow']} shadow records, "
            f"{skipped['live_unrouted']} failed live before routing)",
            file=sys.stderr,
        )
        for bad in skipped["first_invalid_lines"]:
            print(f"  {bad['file']}:{bad['line']}: {bad['why']}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    share = report["changed"] / report["total"]
    if args.max_changed is not None and share > args.max_changed:
        print(
            f"llm-gateway replay: {share:.2%} of requests changed, over --max-changed {args.max_changed:.2%}",
            file=sys.stderr,
        )
        return 1
    return 0
