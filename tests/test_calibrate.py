"""``llm-gateway cohorts calibrate``: per-cohort precision, recall and F1 of a policy on labeled requests, the
confusion table, and for each semantic rule the threshold that serves its cohort best, as a diff of the policy.

The figures are checked against an independent computation: the test embeds the texts with the simulator's own
function, classifies by hand (the header rule, the regex, the similarities, in policy order) and finds the best
thresholds by trying every observed similarity. The CLI runs as a real process; one run embeds over HTTP through a
real simulator process, which also shows that nothing is embedded twice."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calibrate.edit import EditError, edit_thresholds
from gateway.calibrate.metrics import Candidate, RuleSweep, Score, written_threshold
from gateway.cli import main
from gateway.policy import load_policy, parse_policy
from gateway.sim.embeddings import embed
from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
BILLING = ["charged twice on my card", "refund my payment", "why is my bill higher this month"]
SHIPPING = ["where is my parcel", "how long does delivery take", "do you ship to my country"]
REGEX = re.compile("(?i)invoice|chargeback")
POLICY = """\
version: 1
models:
  base: {kind: base, backends: ["sim://base"]}
  embedder: {kind: embedding, backends: ["EMBED"]}
cohorts:
  - name: vip
    match: {header: {x-tier: vip}}
  # billing: a regex for the obvious, a semantic rule for the rest
  - name: billing
    match:
      any:
        - {content: "(?i)invoice|chargeback"}
        - semantic:
            model: embedder
            examples: BILLING
            threshold: 0.95
  - name: shipping
    match:
      semantic:
        model: embedder
        examples: SHIPPING
  - name: general
    default: true
routes:
  general: {target: base}
"""
LABELED: list[tuple[str, str, dict[str, str]]] = [
    *(
        (text, "billing", {})
        for text in (
            "I was charged twice on my credit card",
            "please refund my payment for order 12",
            "why is my bill so much higher this month",
            "my card was charged twice",
            "can you refund my last payment",
            "the bill this month is higher than usual",
            "I need an invoice copy",
            "charged for shipping on my order",
            "refund policy for my order",
            "how long does a refund take",
        )
    ),
    *(
        (text, "shipping", {})
        for text in (
            "where is my parcel now",
            "how long will delivery take to Norway",
            "do you ship to Canada",
            "my parcel has not arrived",
        )
    ),
    *(
        (text, "general", {})
        for text in (
            "what is the weather in Paris",
            "how do I reset my password",
            "tell me a joke about cats",
            "what are your opening hours",
            "recommend a good book",
            "higher speed plan this month",
            "my payment page does not load",
            "twice a month newsletter",
            "why is my internet slower this month",
            "is my country supported",
        )
    ),
    # Labeled by header: the header rule comes first, so their billing-like texts never reach the semantic rule.
    ("refund my payment please", "vip", {"X-Tier": "vip"}),
    ("my card was charged twice", "vip", {"X-Tier": "vip"}),
    ("what is the weather", "vip", {"X-Tier": "vip"}),
]
COHORTS = ["vip", "billing", "shipping", "general"]


def policy_text(embed_url: str = "sim://embed") -> str:
    return (
        POLICY.replace("EMBED", embed_url)
        .replace("examples: BILLING", f"examples: {json.dumps(BILLING)}")
        .replace("examples: SHIPPING", f"examples: {json.dumps(SHIPPING)}")
    )


def write_labeled(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write("# billing, shipping, general and vip requests\n\n")
        for text, cohort, headers in LABELED:
            line: dict[str, Any] = {"request": {"model": "base", "messages": [{"role": "user", "content": text}]}}
            line["cohort"] = cohort
            if headers:
                line["headers"] = headers
            out.write(json.dumps(line) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    return policy, write_labeled(tmp_path / "labeled.jsonl")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "cohorts", "calibrate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


# --- the independent computation -----------------------------------------------------------------------------------


def similarity(examples: list[str], text: str) -> float:
    matrix = np.array([embed(e, 256) for e in examples])
    return float((matrix @ np.array(embed(text, 256))).max())


SIMS = {text: (similarity(BILLING, text), similarity(SHIPPING, text)) for text, _, _ in LABELED}


def by_hand(billing_t: float, shipping_t: float) -> list[str]:
    """The policy, evaluated by hand: header, then regex or billing similarity, then shipping similarity."""
    out = []
    for text, _, headers in LABELED:
        billing, shipping = SIMS[text]
        if headers.get("X-Tier") == "vip":
            out.append("vip")
        elif REGEX.search(text) or billing >= billing_t:
            out.append("billing")
        elif shipping >= shipping_t:
            out.append("shipping")
        else:
            out.append("general")
    return out


def figures(cohort: str, predictions: list[str]) -> tuple[float, float, float, int]:
    labels = [label for _, label, _ in LABELED]
    hits = sum(1 for label, got in zip(labels, predictions, strict=True) if label == got == cohort)
    predicted = predictions.count(cohort)
    support = labels.count(cohort)
    precision = hits / predicted if predicted else 0.0
    recall = hits / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1, support


def tried(which: int) -> list[float]:
    """Every observed similarity to one rule's examples, and one above them all."""
    return [*sorted({sims[which] for sims in SIMS.values()}), 1.01]


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-5)


def check_scores(reported: list[dict[str, Any]], predictions: list[str]) -> None:
    for row in reported:
        precision, recall, f1, support = figures(row["cohort"], predictions)
        assert (row["precision"], row["recall"], row["f1"]) == (approx(precision), approx(recall), approx(f1))
        assert row["support"] == support
        assert row["predicted"] == predictions.count(row["cohort"])


# --- the command ---------------------------------------------------------------------------------------------------


def test_reports_scores_confusion_and_thresholds_that_raise_f1(files: tuple[Path, Path], tmp_path: Path) -> None:
    policy, labeled = files
    out = tmp_path / "suggested.yaml"
    done = cli("--policy", str(policy), str(labeled), "--json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    labels = [label for _, label, _ in LABELED]

    written = [p["written"] for p in report["predictions"]]
    assert written == by_hand(0.95, 0.8)
    assert [p["cohort"] for p in report["predictions"]] == labels
    assert [p["line"] for p in report["predictions"]] == list(range(3, 3 + len(LABELED)))
    check_scores(report["cohorts"], written)
    assert report["cohorts"][0]["recall"] == 1.0  # the header-labeled cohort
    counts = [
        [sum(1 for lab, got in zip(labels, written, strict=True) if (lab, got) == (r, c)) for c in COHORTS]
        for r in COHORTS
    ]
    assert report["confusion"] == {"cohorts": COHORTS, "counts": counts}
    assert counts[1][3] > 0  # billing requests the written 0.95 sends to general

    billing, shipping = report["rules"]
    assert billing["path"] == "cohorts[1].match.any[1].semantic" and not billing["threshold_is_default"]
    best_billing = max(figures("billing", by_hand(t, 0.8))[2] for t in tried(0))
    assert billing["suggested"] < 0.95
    assert billing["after"]["f1"] == approx(best_billing) and billing["after"]["f1"] > billing["before"]["f1"] + 0.2
    assert billing["before"]["f1"] == approx(figures("billing", by_hand(0.95, 0.8))[2])
    assert shipping["threshold_is_default"] and shipping["threshold"] == 0.8
    best_shipping = max(figures("shipping", by_hand(billing["suggested"], t))[2] for t in tried(1))
    assert shipping["suggested"] < 0.8
    assert shipping["after"]["f1"] == approx(best_shipping)
    assert shipping["after"]["f1"] > shipping["before"]["f1"]

    suggested = by_hand(billing["suggested"], shipping["suggested"])
    assert [p["suggested"] for p in report["predictions"]] == suggested
    check_scores(report["suggested"]["cohorts"], suggested)

    changed = [line for line in report["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-            threshold: 0.95",
        f"+            threshold: {billing['suggested']}",
        f"+        threshold: {shipping['suggested']}",
    ]
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(out)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert check.returncode == 0, check.stderr
    text = out.read_text(encoding="utf-8")
    assert "# billing: a regex for the obvious" in text  # edited, not rewritten
    loaded = load_policy(out).spec
    rules = [loaded.cohorts[1].match.any[1].semantic, loaded.cohorts[2].match.semantic]  # type: ignore[union-attr,index]
    assert [r.threshold for r in rules] == [billing["suggested"], shipping["suggested"]]  # type: ignore[union-attr]


def test_the_suggested_policy_scores_what_was_reported(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, labeled = files
    out = tmp_path / "suggested.yaml"
    assert main(["cohorts", "calibrate", "--policy", str(policy), str(labeled), "--json", "--out", str(out)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["changed"]
    assert main(["cohorts", "calibrate", "--policy", str(out), str(labeled), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cohorts"] == first["suggested"]["cohorts"]
    assert again["confusion"] == first["suggested"]["confusion"]
    assert not again["changed"] and again["diff"] == ""
    assert all(rule["suggested"] is None and rule["kept_because"] for rule in again["rules"])


def test_target_precision_takes_the_most_recall_that_reaches_it(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy, labeled = files
    args = ["cohorts", "calibrate", "--policy", str(policy), str(labeled), "--json"]
    assert main(args) == 0
    by_f1 = json.loads(capsys.readouterr().out)["rules"][0]
    assert by_f1["after"]["precision"] < 0.8  # the highest F1 buys its recall with precision
    assert main([*args, "--target-precision", "0.8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objective"] == "recall_at_precision"
    rule = report["rules"][0]
    scores = [figures("billing", by_hand(t, 0.8)) for t in tried(0)]
    best = max((score for score in scores if score[0] >= 0.8), key=lambda score: (score[1], score[0]))
    assert rule["after"]["precision"] >= 0.8
    assert (rule["after"]["precision"], rule["after"]["recall"]) == (approx(best[0]), approx(best[1]))
    assert figures("billing", by_hand(rule["suggested"], 0.8))[:2] == (approx(best[0]), approx(best[1]))
    assert rule["suggested"] > by_f1["suggested"] and rule["after"]["recall"] < by_f1["after"]["recall"]

    assert main([*args, "--target-precision", "0.7"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"][0]["suggested"] == by_f1["suggested"]


@pytest.fixture
def sim_process() -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "sim", "--port", str(port), "--model", "embedder"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_over_http_the_same_answer_and_nothing_embedded_twice(
    files: tuple[Path, Path], tmp_path: Path, sim_process: str
) -> None:
    policy, labeled = files
    over_http = tmp_path / "http.yaml"
    over_http.write_text(policy_text(sim_process), encoding="utf-8")
    before = httpx.get(f"{sim_process}/sim/stats").json()["total_requests"]
    remote = cli("--policy", str(over_http), str(labeled), "--json")
    assert remote.returncode == 0, remote.stderr
    local = cli("--policy", str(policy), str(labeled), "--json")
    assert local.returncode == 0, local.stderr
    remote_report, local_report = json.loads(remote.stdout), json.loads(local.stdout)
    for key in ("cohorts", "confusion", "rules", "predictions", "suggested"):
        assert remote_report[key] == local_report[key]
    # Two rules' examples, then every request text once: 3 calls, for 8 classifications of the whole set.
    assert httpx.get(f"{sim_process}/sim/stats").json()["total_requests"] - before == 3
    assert remote_report["classifications"] == 8


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "2: not a JSON line"),
        ('["a list"]', "2: a line is a JSON object"),
        (
            '{"request": {"messages": []}, "cohort": "biling"}',
            "2: cohort: unknown cohort 'biling' (did you mean 'billing'?)",
        ),
        ('{"request": {"messages": []}, "cohort": "billing", "label": "x"}', "2: label: unknown key"),
        ('{"cohort": "billing"}', "2: request: missing required key"),
        (
            '{"request": {}, "cohort": "billing", "headers": {"x-tier": 1}}',
            "2: headers.x-tier: Input should be a valid string",
        ),
        ('{"request": "hi", "cohort": "billing"}', "2: request: Input should be a valid dictionary"),
        ('{"request": {}, "cohort": "billing", "api_key": 3}', "2: api_key: Input should be a valid string"),
    ],
)
def test_bad_lines_are_refused_with_file_and_line(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    policy, _ = files
    labeled = tmp_path / "bad.jsonl"
    good = {"request": {"model": "base", "messages": [{"role": "user", "content": "hello"}]}, "cohort": "general"}
    labeled.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
    assert main(["cohorts", "calibrate", "--policy", str(policy), str(labeled)]) == 2
    assert f"{labeled}:{message}" in capsys.readouterr().err


def test_bad_line_through_the_real_cli(files: tuple[Path, Path], tmp_path: Path) -> None:
    policy, _ = files
    labeled = tmp_path / "bad.jsonl"
    labeled.write_text('\n# a comment\n{"request": {}, "cohort": "shiping"}\n', encoding="utf-8")
    done = cli("--policy", str(policy), str(labeled))
    assert done.returncode == 2
    assert f"{labeled}:3: cohort: unknown cohort 'shiping' (did you mean 'shipping'?)" in done.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert main(["cohorts", "calibrate", "--policy", str(policy), str(empty)]) == 2


def test_an_embedder_that_is_down_is_an_error_with_the_reason(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, labeled = files
    down = tmp_path / "down.yaml"
    down.write_text(policy_text(f"http://127.0.0.1:{free_port()}"), encoding="utf-8")
    assert main(["cohorts", "calibrate", "--policy", str(down), str(labeled)]) == 2
    err = capsys.readouterr().err
    assert "cohorts[1] billing (cohorts[1].match.any[1].semantic): cannot embed its examples (unavailable)" in err


def test_text_report(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    policy, labeled = files
    assert main(["cohorts", "calibrate", "--policy", str(policy), str(labeled)]) == 0
    text = capsys.readouterr().out
    assert "confusion, as written (rows: labeled cohort, columns: predicted cohort):" in text
    assert re.search(
        r"billing \(cohorts\[1\]\.match\.any\[1\]\.semantic\): threshold 0\.95 -> 0\.\d+; billing: f1", text
    )
    assert "threshold 0.8 (default) -> " in text
    assert f"--- {policy}\n+++ {policy} (suggested)\n" in text


# --- the parts -----------------------------------------------------------------------------------------------------


def test_a_threshold_is_inserted_into_a_flow_mapping_and_an_alias_is_refused() -> None:
    text = policy_text().replace(
        f"      semantic:\n        model: embedder\n        examples: {json.dumps(SHIPPING)}\n",
        '      semantic: {model: embedder, examples: ["où est mon colis", "where is my parcel"]}\n',
    )
    spec = parse_policy(text).spec
    path = "cohorts[2].match.semantic"
    rule = spec.cohorts[2].match.semantic  # type: ignore[union-attr]
    assert rule is not None
    cohorts = list(spec.cohorts)
    match = cohorts[2].match.model_copy(update={"semantic": rule.model_copy(update={"threshold": 0.35})})  # type: ignore[union-attr]
    cohorts[2] = cohorts[2].model_copy(update={"match": match})
    edited = edit_thresholds(text, {path: 0.35}, spec.model_copy(update={"cohorts": cohorts}))
    assert '      semantic: {threshold: 0.35, model: embedder, examples: ["où est mon colis", ' in edited
    assert parse_policy(edited).spec.cohorts[2].match.semantic.threshold == 0.35  # type: ignore[union-attr]

    shared = text.replace("        - semantic:\n", "        - semantic: &rule\n").replace(
        '      semantic: {model: embedder, examples: ["où est mon colis", "where is my parcel"]}\n',
        "      semantic: *rule\n",
    )
    shared_spec = parse_policy(shared).spec
    with pytest.raises(EditError, match=re.escape("set them by hand: cohorts[1].match.any[1].semantic = 0.5")):
        edit_thresholds(shared, {"cohorts[1].match.any[1].semantic": 0.5}, shared_spec)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from([-0.5, 0.1, 0.3, 0.3, 0.55, 0.7, 0.9, 1.0])),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_the_sweep_scores_every_threshold_as_brute_force_does(
    rows: list[tuple[float | None, bool, bool, bool]],
) -> None:
    sims, labeled, held, not_held = (list(column) for column in zip(*rows, strict=True))
    sweep = RuleSweep(sims, labeled, held, not_held)

    def brute(t: float) -> Score:
        predicted = [h if s is not None and s >= t else n for s, h, n in zip(sims, held, not_held, strict=True)]
        hits = sum(p and lab for p, lab in zip(predicted, labeled, strict=True))
        return Score.of(hits, sum(predicted), sum(labeled))

    for t in (-1.0, 0.0, 0.3, 0.31, 0.8, 1.0, 1.5):
        assert sweep.at(t) == brute(t)
    for candidate in sweep.candidates():
        assert brute(candidate.similarity) == candidate.score
        value = written_threshold(candidate)
        if value is not None:
            assert brute(value) == candidate.score
            assert -1.0 <= value <= 1.0


@given(st.floats(-1.0, 1.0), st.floats(0.0, 0.5))
def test_the_written_threshold_lies_in_the_interval_and_is_short(high: float, width: float) -> None:
    low = high - width if width >= 1e-6 else None
    value = written_threshold(Candidate(high, low, Score.of(0, 0, 0)))
    assert value is not None
    assert (low is None or low < value) and value <= high and value >= -1.0
    if low is not None and width >= 0.11:
        assert len(repr(value).split(".")[-1]) <= 2
