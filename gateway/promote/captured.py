"""A traffic capture (the policy's ``capture:``) read as eval cases: real prompts instead of hand-written ones.

Only primary records captured with ``content: full`` hold the prompt; redacted and ``none`` records are counted and
skipped, and a capture without a single full record is refused. Unlike a hand-written dataset, a capture is written
by a running gateway: a live file's last line may be cut and a line may be damaged, so bad lines are skipped and
counted instead of stopping the run (the counts are printed). Reading streams the file line by line with a bound on
each line, and ``max_cases`` keeps a deterministic sample (by a hash of the request id) in bounded memory, so a large
capture costs what the sample costs.
"""

from __future__ import annotations

import gzip
import heapq
import io
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.policy.schema import PolicySpec
from gateway.promote.dataset import Case, DatasetError, Expect, LiveAnswer
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import unit_hash

MAX_LINE_BYTES = 1024 * 1024
CAPTURE_KEYS = ("v", "kind", "outcome")
"""A JSON line with all of these is a capture record, not a hand-written case."""
CLIENT_FIELDS = ("model", "stream", "stream_options", "user", "metadata")
"""The client's own fields: dropped from the body, every model gets the same request under its own name."""
COMPLETIONS_ONLY = ("echo", "best_of", "suffix", "logprobs")
_DETECT_LINES = 20
_GZIP_MAGIC = b"\x1f\x8b"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class _Routing(_Lenient):
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: str | None = None


class _Outcome(_Lenient):
    cohort: str | None = None
    model: str | None = None


class _Answer(_Lenient):
    finish_reason: str | None = None
    refusal: bool = False


class _Record(_Lenient):
    """The fields of a capture record that the eval reads; the rest of the record is ignored."""

    v: int
    kind: str
    request_id: str = Field(min_length=1)
    endpoint: str
    content: Literal["full", "redacted", "none"]
    request: dict[str, Any] | None = None
    routing: _Routing = _Routing()
    outcome: _Outcome
    answer: _Answer | None = None


@dataclass
class CaptureLoad:
    """The cases of a capture, in file order, and why the other lines were skipped (reason → count)."""

    cases: list[Case]
    lines: int
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self, path: str) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        tail = " (a live file's last line may be cut)" if self.skipped["not JSON"] else ""
        return f"{path}: {len(self.cases)} cases from {self.lines} lines" + (
            f"; skipped {reasons}{tail}" if reasons else ""
        )


def _open(path: str | Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed when it is gzip (by its magic bytes, whatever its name)."""
    with Path(path).open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else Path(path).open("rb")


def _lines(handle: io.BufferedIOBase) -> Iterator[bytes | None]:
    """Each line, or None for a line over :data:`MAX_LINE_BYTES` (read past in bounded pieces, never held)."""
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(MAX_LINE_BYTES)
            yield None
        else:
            yield raw


def is_capture(path: str | Path) -> bool:
    """The first JSON object among the file's first lines is a capture record; False when it cannot be read."""
    try:
        with _open(path) as handle:
            for _, raw in zip(range(_DETECT_LINES), _lines(handle), strict=False):
                try:
                    data = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    return all(key in data for key in CAPTURE_KEYS)
    except (OSError, EOFError, zlib.error):
        return False
    return False


def sample_key(case_id: str) -> float:
    """Where a case falls in a ``--max-cases`` sample: the same id is kept or left out on every run."""
    return unit_hash("eval-sample:" + case_id)


def sample(cases: Iterable[Case], max_cases: int) -> list[Case]:
    """The ``max_cases`` cases of lowest :func:`sample_key`, in file order."""
    kept = heapq.nsmallest(max_cases, cases, key=lambda case: sample_key(case.id))
    return sorted(kept, key=lambda case: case.line)


def load_capture(path: str | Path, spec: PolicySpec, *, max_cases: int | None = None) -> CaptureLoad:
    """The cases of the capture at ``path``; raises :class:`DatasetError` when it has none to offer."""
    name = str(path)
    classifier = CohortClassifier(spec)
    cohorts = {cohort.name for cohort in spec.cohorts}
    load = CaptureLoad([], 0)
    kept: list[tuple[float, int, Case]] = []  # a max-heap on the sample key, through negation
    seen: set[str] = set()
    full = 0
    try:
        with _open(path) as handle:
            for number, raw in enumerate(_lines(handle), start=1):
                load.lines = number
                record = _record(raw, load.skipped)
                if record is None:
                    continue
                full += record.kind == "primary" and record.content == "full"
                case = _case(record, number, classifier, cohorts, load.skipped)
                if case is None:
                    continue
                if case.id in seen:
                    load.skipped["duplicate request id"] += 1
                    continue
                seen.add(case.id)
                heapq.heappush(kept, (-sample_key(case.id), number, case))
                if max_cases is not None and len(kept) > max_cases:
                    heapq.heappop(kept)
                    load.skipped["sampled out (--max-cases)"] += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if not load.lines:
            raise DatasetError(name, 0, f"cannot read the capture: {exc}") from None
        load.skipped[f"unreadable rest of the file ({exc})"] += 1
    except OSError as exc:
        raise DatasetError(name, 0, f"cannot read the capture: {exc}") from None
    if not full:
        raise DatasetError(
            name,
            0,
            "capture content: full is required: this capture has no primary record with content 'full' "
            "(redacted and none records hold no prompt text)",
        )
    load.cases = [case for _, _, case in sorted(kept, key=lambda item: item[1])]
    if not load.cases:
        raise DatasetError(name, 0, f"the capture has no usable case: {load.summary(name)}")
    return load


def _record(raw: bytes | None, skipped: Counter[str]) -> _Record | None:
    if raw is None:
        skipped[f"over {MAX_LINE_BYTES // (1024 * 1024)} MiB"] += 1
        return None
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        skipped["not JSON"] += 1
        return None
    if isinstance(data, dict) and data.get("v") != 1 and isinstance(data.get("v"), int):
        skipped["unsupported version"] += 1
        return None
    try:
        return _Record.model_validate(data)
    except ValidationError:
        skipped["wrong types"] += 1
        return None


def _case(
    record: _Record, number: int, classifier: CohortClassifier, cohorts: set[str], skipped: Counter[str]
) -> Case | None:
    if record.kind != "primary":
        skipped["shadow" if record.kind == "shadow" else "unknown kind"] += 1
        return None
    if record.content != "full" or record.request is None:
        skipped[f"content {record.content}"] += 1
        return None
    if record.endpoint not in ("chat", "completions"):
        known = record.endpoint in ("responses", "embeddings")
        skipped[f"endpoint {record.endpoint}" if known else "unknown endpoint"] += 1
        return None
    body = chat_body(record.endpoint, record.request)
    if body is None:
        skipped["not a usable request"] += 1
        return None
    cohort = record.outcome.cohort
    if cohort not in cohorts:
        features = RequestFeatures(record.request, record.routing.headers, record.routing.api_key)
        cohort = classifier.classify(features).cohort
    answer = record.answer
    live = LiveAnswer(
        refused=answer.refusal if answer is not None else None,
        finish_reason=answer.finish_reason if answer is not None else None,
        model=record.outcome.model,
    )
    return Case(record.request_id, number, cohort, body, (), Expect(), captured=live)


def chat_body(endpoint: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The chat-completions body the eval sends for a captured request (a prompt becomes one user message), or
    None when the request is not one a model can be asked again (no messages, a prompt of token ids, bad types)."""
    body = {key: value for key, value in request.items() if key not in CLIENT_FIELDS}
    if endpoint == "completions":
        prompt = body.pop("prompt", None)
        for key in COMPLETIONS_ONLY:
            body.pop(key, None)
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            return None
        body["messages"] = [{"role": "user", "content": prompt}]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return None
    tools = body.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        return None
    if not isinstance(body.get("response_format", {}), dict):
        return None
    return body
