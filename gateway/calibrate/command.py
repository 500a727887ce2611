"""``llm-gateway cohorts calibrate``: how well a policy's cohorts fit labeled requests, and better thresholds.

``load`` (the policy, and the labeled set against its cohorts) → ``embed`` (every semantic rule's examples, then
every request's text, once, through :class:`DirectEmbedder`) → ``classify`` (as written) → ``suggest`` (per semantic
rule, :mod:`gateway.calibrate.suggest`) → ``classify`` (as suggested) → the report and the policy's diff, and with
``--out`` the suggested policy file. Exit codes: 0 with a report; 2 on a usage or input error: an invalid policy, a
bad labeled line (``FILE:LINE: message``), an embedding model that cannot be reached (with the reason), a
suggestion that cannot be written into the policy's text, an ``--out`` that cannot be written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from gateway.calibrate.classify import Calibration, embed_requests, with_thresholds
from gateway.calibrate.edit import EditError, edit_thresholds, unified_diff
from gateway.calibrate.labeled import LabeledError, LabeledRequest, load_labeled
from gateway.calibrate.outcome import Outcome
from gateway.calibrate.report import render_json, render_text
from gateway.calibrate.suggest import suggest, thresholds_of
from gateway.policy import LoadedPolicy, PolicyError
from gateway.policy.loader import parse_policy_bytes, read_policy_bytes
from gateway.routing.embedders import DirectEmbedder
from gateway.routing.embedding import EmbeddingUnavailable
from gateway.routing.semantic import SemanticLoadError, prepare, semantic_rules

PROG = "llm-gateway cohorts calibrate"


class CalibrateError(Exception):
    """An input the command cannot work with; the message is printed as is, exit 2."""


def run(args: argparse.Namespace) -> int:
    try:
        data = read_policy_bytes(args.policy)
        policy = parse_policy_bytes(data, str(args.policy))
    except PolicyError as exc:
        print(f"{PROG}: invalid policy:\n{exc}", file=sys.stderr)
        return 2
    try:
        labeled = load_labeled(args.labeled, [cohort.name for cohort in policy.spec.cohorts])
        outcome = asyncio.run(calibrate(policy, labeled, args.target_precision))
        text = data.decode("utf-8")
        thresholds = thresholds_of(outcome.suggestions)
        try:
            suggested_text = edit_thresholds(text, thresholds, with_thresholds(policy.spec, thresholds))
        except EditError as exc:
            raise CalibrateError(f"cannot write the suggestion into {args.policy}: {exc}") from None
        out_name = str(args.out) if args.out is not None else f"{args.policy} (suggested)"
        diff = unified_diff(text, suggested_text, str(args.policy), out_name)
        if args.out is not None:
            _write(args.out, suggested_text)
            _warn_examples_files(policy, args.out)
    except (LabeledError, CalibrateError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        report = render_json(outcome, diff, str(args.labeled), args.target_precision, args.out)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(outcome, diff, str(args.labeled), args.target_precision, args.out))
    return 0


async def calibrate(
    policy: LoadedPolicy, labeled: list[LabeledRequest], target_precision: float | None = None
) -> Outcome:
    """Classify ``labeled`` as written, suggest thresholds, classify as suggested. Raises :class:`CalibrateError`
    when the examples or the requests cannot be embedded."""
    async with DirectEmbedder(policy.spec) as embedder:
        try:
            prepared = await prepare(policy, embedder)
        except SemanticLoadError as exc:
            raise CalibrateError(str(exc)) from None
        try:
            vectors = await embed_requests(policy.spec, labeled, embedder)
        except EmbeddingUnavailable as exc:
            raise CalibrateError(f"cannot embed the labeled requests ({exc.reason}): {exc}") from None
    calibration = Calibration(policy.spec, prepared, labeled, vectors)
    written = await calibration.predict()
    suggestions = await suggest(calibration, target_precision)
    thresholds = thresholds_of(suggestions)
    suggested = await calibration.predict(thresholds) if thresholds else written
    return Outcome(policy, labeled, written, suggestions, suggested, calibration.passes)


def _warn_examples_files(policy: LoadedPolicy, out: Path) -> None:
    """``examples_file`` paths are relative to the policy file: a copy elsewhere reads other files, or none."""
    if Path(policy.path).resolve().parent == out.resolve().parent:
        return
    if any(rule.spec.examples_file is not None for rule in semantic_rules(policy.spec)):
        print(
            f"{PROG}: note: {out} is not in {policy.path}'s directory; its examples_file paths are relative to "
            "the policy file's directory, so move it next to the policy (or adjust them) before using it",
            file=sys.stderr,
        )


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CalibrateError(f"cannot write {path}: {exc}") from None
