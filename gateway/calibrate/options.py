"""``llm-gateway cohorts calibrate``'s command line. Kept free of heavy imports: the CLI builds every parser at
start, and only the command that runs loads what it needs (:func:`gateway.calibrate.command.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``cohorts`` (with its subcommand ``calibrate``) on the CLI's ``subparsers``."""
    cohorts: argparse.ArgumentParser = subparsers.add_parser(
        "cohorts", help="semantic cohorts: calibrate their thresholds on labeled requests"
    )
    commands = cohorts.add_subparsers(dest="cohorts_command", required=True)
    calibrate = commands.add_parser(
        "calibrate",
        help="precision, recall and F1 per cohort on labeled requests, and the semantic thresholds that serve them",
        description="Classify labeled requests with the policy; report precision, recall and F1 per cohort and the "
        "confusion table; suggest for each semantic rule the threshold that maximises its cohort's F1 (or reaches "
        "--target-precision with the most recall), as a diff of the policy (docs/semantic.md).",
    )
    calibrate.add_argument("--policy", required=True, help="routing policy YAML")
    calibrate.add_argument(
        "labeled",
        type=Path,
        metavar="LABELED.jsonl",
        help='one {"request": BODY, "cohort": NAME} a line (optional "headers": {...}, "api_key": KEY_NAME)',
    )
    calibrate.add_argument("--json", action="store_true", help="machine-readable output")
    calibrate.add_argument(
        "--target-precision",
        type=_precision,
        metavar="X",
        help="for each semantic rule, the lowest threshold whose cohort's precision is at least X (0 to 1)",
    )
    calibrate.add_argument("--out", type=Path, metavar="SUGGESTED.yaml", help="write the suggested policy here")
    return calibrate


def _precision(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a precision above 0 and at most 1, got {text}")
    return value
