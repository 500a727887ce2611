"""Policy loading: every shipped policy is valid; each kind of mistake is reported with its file:line:col."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "routing_policies").glob("*.yaml"))

GOOD = """\
version: 1
public_models: [support-assistant]
models:
  base: {kind: base, backends: [http://127.0.0.1:9001]}
  billing-specialist: {kind: source, backends: [http://127.0.0.1:9002]}
  merged-v1:
    kind: merged
    sources: [billing-specialist]
    backends: [http://127.0.0.1:9004]
cohorts:
  - name: billing_refund
    match: {content: "(?i)refund"}
  - name: out_of_domain
    default: true
routes:
  billing_refund:
    target: merged-v1
    fallback: [billing-specialist, base]
    mirror: {to: [merged-v1], sample: 0.1}
  out_of_domain: {target: base}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return str(caught.value).splitlines()


def test_good_policy_loads() -> None:
    policy = parse_policy(GOOD, "p.yaml")
    assert policy.spec.default_cohort == "out_of_domain"
    assert len(policy.digest) == 12


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_are_valid(path: Path) -> None:
    load_policy(path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "fallback: [billing-specialist, base]",
            "fallback: [biling-specialist, base]",
            "p.yaml:18:16: routes.billing_refund.fallback[0]: unknown model 'biling-specialist' "
            "(did you mean 'billing-specialist'?)",
        ),
        (
            "  out_of_domain: {target: base}",
            "  out_of_domain: {target: base}\n  billing_refnd: {target: base}",
            "p.yaml:21:3: routes.billing_refnd: unknown cohort 'billing_refnd' (did you mean 'billing_refund'?)",
        ),
        ("target: merged-v1", "target: merged-v2", "p.yaml:17:13: routes.billing_refund.target: unknown model"),
        ("sample: 0.1", "sample: 1.5", "p.yaml:19:39: routes.billing_refund.mirror.sample: Input should be less"),
        ('"(?i)refund"', '"(?i)refund("', "p.yaml:12:22: cohorts[0].match.content: invalid regex"),
        ("    default: true", "    default: false", "p.yaml:13:5: cohorts[1]: a cohort needs a 'match'"),
        (
            "  - name: out_of_domain\n    default: true\n",
            "",
            "cohorts: exactly one cohort must be 'default: true'",
        ),
        (
            "    default: true",
            "    default: true\n  - name: other\n    default: true",
            "p.yaml:16:14: cohorts[2].default: only one cohort may be the default",
        ),
        ("{kind: base, back", "{kind: base, bogus: 1, back", "p.yaml:4:22: models.base.bogus: unknown key"),
        ("{kind: base,", "{kind: basic,", "p.yaml:4:16: models.base.kind: Input should be 'base'"),
        (
            "fallback: [billing-specialist, base]",
            "fallback: [billing-specialist, merged-v1]",
            "routes.billing_refund.fallback[1]: 'merged-v1' already appears earlier in this route (a fallback cycle)",
        ),
        (
            "  out_of_domain: {target: base}",
            "  out_of_domain: {split: {base: 0, merged-v1: 1}}",
            "routes.out_of_domain.split.base: Input should be greater than 0",
        ),
        ("http://127.0.0.1:9001", "ftp://x", "p.yaml:4:33: models.base.backends[0]: 'ftp://x' is not http(s)"),
        ("sources: [billing-specialist]", "sources: [billing-specialst]", "models.merged-v1.sources[0]: unknown model"),
        ("  base: {kind", "  base: {kind", ""),
        ("version: 1", "version: 2", "p.yaml:1:10: version: Input should be 1"),
        ("match: {content:", "match: {}\n    x: {content:", "p.yaml:13:5: cohorts[0].x: unknown key"),
        ("routes:", "routes:\n  out_of_domain: {target: base}", "p.yaml:21:3: duplicate key 'out_of_domain'"),
        ("  billing_refund:\n    target", "  billing_refund:\n   target", "invalid YAML"),
        (
            "  out_of_domain: {target: base}",
            "  out_of_domain: {target: base, fallback: sources}",
            "routes.out_of_domain.fallback: 'sources' needs a merged or candidate target",
        ),
        ("public_models: [support-assistant]", "public_models: [base]", "public_models[0]: 'base' is also a registry"),
    ],
)
def test_broken_policy_names_file_line_and_path(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    if not expected:
        parse_policy(GOOD.replace(old, new), "p.yaml")
        return
    messages = errors_of(GOOD.replace(old, new))
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("p.yaml:") for m in messages)


def test_all_problems_are_reported_together() -> None:
    text = GOOD.replace("target: merged-v1", "target: merged-v2").replace("base]", "bsae]")
    messages = errors_of(text)
    assert len(messages) == 2
    assert "unknown model 'merged-v2'" in messages[0]
    assert "unknown model 'bsae' (did you mean 'base'?)" in messages[1]


def test_not_a_mapping() -> None:
    assert errors_of("- 1\n- 2\n") == ["p.yaml:1:1: a policy is a YAML mapping (version, models, ...)"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def test_check_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    bad = tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("target: merged-v1", "target: merged-v2"))
    ok = run_cli("check", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    failed = run_cli("check", str(good), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:17:13: routes.billing_refund.target: unknown model 'merged-v2'" in failed.stderr
    missing = run_cli("check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "cannot read policy" in missing.stderr
