"""Hostile policy files: unknown YAML tags, alias bombs, deep nesting, huge files, values YAML cannot build, and
headers that must never be forwarded. Each is refused with ``file:line:col`` by ``llm-gateway check``, quickly and
with bounded memory, never with a traceback; ordinary anchors and aliases keep working."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.policy import PolicyError, parse_policy, yamlpos

ROOT = Path(__file__).resolve().parent.parent
MAX_POLICY_BYTES = 4 * 1024 * 1024  # the documented limit

GOOD = """\
version: 1
models:
  base: {kind: base, backends: [http://127.0.0.1:9001]}
cohorts:
  - {name: general, default: true}
routes:
  general: {target: base}
"""

BOMB = (
    GOOD
    + "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 9))
)
"""The billion laughs: 1 KiB that expands to 9**9 (387 million) strings."""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return str(caught.value).splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "x: !custom 1\n", "p.yaml:8:4: YAML tag '!custom' is not allowed"),
        (GOOD + "x: !!python/name:os.system ''\n", "p.yaml:8:4: YAML tag '!!python/name:os.system' is not allowed"),
        (GOOD + "x: !!python/object:os.system {a: 1}\n", "p.yaml:8:4: YAML tag '!!python/object:os.system'"),
        (GOOD + "x: !!python/tuple [1, 2]\n", "p.yaml:8:4: YAML tag '!!python/tuple' is not allowed"),
        (GOOD + "x: !!binary aGVsbG8=\n", "p.yaml:8:4: YAML tag '!!binary' is not allowed"),
        (GOOD + "x: !!set {a: null}\n", "p.yaml:8:4: YAML tag '!!set' is not allowed"),
        ("!!omap\n" + GOOD, "p.yaml:1:1: YAML tag '!!omap' is not allowed"),
        (GOOD + "x: [1, !local 2]\n", "p.yaml:8:8: YAML tag '!local' is not allowed"),
    ],
)
def test_unknown_tags_are_refused_with_their_position(text: str, expected: str) -> None:
    messages = errors_of(text)
    assert any(m.startswith(expected) for m in messages), messages


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-13-45", "p.yaml:2:11: invalid timestamp '2025-13-45'"),
        ("1" * 5000, "p.yaml:2:11: invalid int"),
    ],
)
def test_values_yaml_cannot_build_are_refused_with_their_position(value: str, expected: str) -> None:
    messages = errors_of(GOOD.replace("version: 1\n", f"version: 1\nrevision: {value}\n"))
    assert any(m.startswith(expected) for m in messages), messages


def test_alias_bomb_is_refused_at_the_alias_before_expanding() -> None:
    started = time.perf_counter()
    messages = errors_of(BOMB)
    assert time.perf_counter() - started < 2.0
    assert len(messages) == 1
    assert messages[0].startswith("p.yaml:13:10: document too large: alias '*x4' expands past 100000 values"), messages


def test_self_referring_alias_and_deep_nesting_are_refused() -> None:
    assert errors_of(GOOD + "x: &a [1, *a]\n") == ["p.yaml:8:11: alias '*a' refers to a node that contains it"]
    deep = errors_of(GOOD + "x: " + "[" * 200 + "]" * 200 + "\n")
    assert deep == ["p.yaml:8:67: document too deep: it expands past 64 levels of nesting"]
    chain = GOOD + "".join(f"d{i}: &d{i} [[[[[[[[[[{f'*d{i - 1}' if i else 0}]]]]]]]]]]\n" for i in range(10))
    assert errors_of(chain)[0].startswith("p.yaml:14:19: document too deep: alias '*d5' expands past 64 levels")


def test_ordinary_anchors_and_aliases_still_work() -> None:
    text = """\
version: 1
models:
  base: {kind: base, backends: &replicas [http://127.0.0.1:9001, http://127.0.0.1:9002]}
  billing: {kind: source, backends: *replicas}
cohorts:
  - {name: billing, match: &refund {content: "(?i)refund"}}
  - {name: general, default: true}
routes:
  billing: &route {target: billing, fallback: [base]}
  general: {target: base}
evals:
  cohorts:
    billing: {evaluators: &checks [no_refusal, latency_slo], ttft_slo_s: 2}
    general: {evaluators: *checks}
"""
    spec = parse_policy(text, "p.yaml").spec
    assert spec.models["billing"].backends == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert spec.evals.cohorts["general"].evaluators == ["no_refusal", "latency_slo"]


def test_oversized_text_is_refused_before_parsing() -> None:
    padding = "# " + "x" * 1000 + "\n"
    text = GOOD + padding * (MAX_POLICY_BYTES // len(padding) + 1)
    assert errors_of(text) == ["p.yaml:1:1: policy file larger than 4 MiB: refused unread"]


def test_forward_headers_refuses_hop_by_hop_and_framing_headers() -> None:
    refused = [
        "connection",
        "Keep-Alive",
        "expect",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "proxy-authorization",
        "Proxy-Connection",
        "host",
        "content-length",
        "authorization",
    ]
    listed = ", ".join(["x-tenant", *refused, "x tenant"])
    text = GOOD + f"limits:\n  forward_headers: [{listed}]\n"
    messages = errors_of(text)
    assert len(messages) == len(refused) + 1, messages
    col = len("  forward_headers: [x-tenant, ") + 1
    for i, name in enumerate(refused, start=1):
        message = messages[i - 1]
        assert message.startswith(f"p.yaml:9:{col}: limits.forward_headers[{i}]: '{name}' "), message
        assert "never forwarded" in message
        col += len(name) + 2
    assert "'connection' is a hop-by-hop header" in messages[0]
    assert "'content-length' frames the client's body" in messages[10]
    assert (
        messages[-1]
        == f"p.yaml:9:{col}: limits.forward_headers[{len(refused) + 1}]: 'x tenant' is not a valid header name"
    )
    assert parse_policy(GOOD + "limits:\n  forward_headers: [x-tenant, OpenAI-Organization]\n").spec


def test_check_cli_reports_every_hostile_file_without_a_traceback(tmp_path: Path) -> None:
    files = {
        "tag.yaml": GOOD + "x: !!python/object/apply:os.system ['true']\n",
        "bomb.yaml": BOMB,
        "deep.yaml": GOOD + "x: " + "{a: " * 100 + "1" + "}" * 100 + "\n",
        "huge.yaml": GOOD + "# padding\n" * (MAX_POLICY_BYTES // 10),
        "good.yaml": GOOD,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block for ever: refused as not a regular file
    paths = [str(tmp_path / name) for name in files] + [str(fifo)]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    expected = [
        f"{tmp_path}/tag.yaml:8:4: YAML tag '!!python/object/apply:os.system' is not allowed",
        f"{tmp_path}/bomb.yaml:13:10: document too large: alias '*x4' expands past 100000 values",
        f"{tmp_path}/deep.yaml:8:253: document too deep",
        f"{tmp_path}/huge.yaml:1:1: policy file larger than 4 MiB",
        f"{fifo}:1:1: cannot read policy: not a regular file",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert f"{tmp_path}/good.yaml: ok" in result.stdout


def test_pure_python_parser_refuses_the_same_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PyYAML was built without libyaml its own parser feeds the composer: same values, same refusals."""
    shipped = [path.read_text() for path in sorted((ROOT / "routing_policies").glob("*.yaml"))]
    hostile = [BOMB, GOOD + "x: &a [1, *a]\n", GOOD + "x: " + "[" * 200 + "]" * 200, GOOD + "x: !custom 1\n"]

    def outcomes() -> list[object]:
        found: list[object] = []
        for text in [*shipped, *hostile]:
            try:
                found.append(parse_policy(text, "p.yaml").spec)
            except PolicyError as exc:
                found.append(str(exc))
        return found

    with_libyaml = outcomes()
    monkeypatch.setattr(yamlpos, "_COMPOSER", yamlpos._PythonComposer)
    assert outcomes() == with_libyaml
    assert all(isinstance(found, str) for found in with_libyaml[len(shipped) :])
