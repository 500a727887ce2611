"""The labeled set: JSONL, one ``{"request": BODY, "cohort": NAME}`` a line (optional ``"headers": {...}`` and
``"api_key": NAME``, the policy key a client would have authenticated with).

Read strictly, as the eval dataset is (:mod:`gateway.promote.dataset`): a line that is not JSON, has an unknown key,
a value of the wrong type (``"headers": {"x-tier": 1}`` is not coerced), or a cohort the policy does not have stops
the run with ``FILE:LINE: message``, since a mislabeled request would bend every figure the command reports. Blank
lines and lines starting with ``#`` are skipped. Each line's request becomes the :class:`RequestFeatures` the
classifier reads, headers lower-cased as the gateway's are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.promote.dataset import DatasetError, parse_strict_line
from gateway.routing.features import RequestFeatures

MAX_FILE_BYTES = 256 * 1024 * 1024
"""A labeled set is read whole; past this it is refused unread (a few hundred thousand requests fit)."""


class LabeledError(DatasetError):
    """A labeled set that must not be used; ``str()`` is ``FILE:LINE: message`` (``FILE: message`` for the file)."""


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request: dict[str, Any]
    cohort: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: str | None = Field(default=None, min_length=1)  # the name of a policy key, for api_key matchers


@dataclass(frozen=True)
class LabeledRequest:
    """One labeled request: its line in the file, the cohort it belongs to, and what the classifier reads."""

    line: int
    cohort: str
    features: RequestFeatures


def load_labeled(path: str | Path, cohorts: Iterable[str]) -> list[LabeledRequest]:
    """Every labeled request of ``path``, in file order; raises :class:`LabeledError` on the first bad line, an
    unreadable or empty file."""
    name = str(path)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LabeledError(name, 0, f"cannot read the labeled set: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise LabeledError(name, 0, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: refused unread")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabeledError(name, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None
    known = list(cohorts)
    labeled = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() and not raw.lstrip().startswith("#"):
            labeled.append(_parse_line(name, number, raw, known))
    if not labeled:
        raise LabeledError(name, 0, "the labeled set has no requests")
    return labeled


def _parse_line(name: str, number: int, raw: str, cohorts: list[str]) -> LabeledRequest:
    shape = 'a line is a JSON object: {"request": {...}, "cohort": "..."}'
    line = parse_strict_line(_Line, name, number, raw, cohorts, LabeledError, shape)
    headers = {key.lower(): value for key, value in line.headers.items()}
    return LabeledRequest(number, line.cohort, RequestFeatures(line.request, headers, line.api_key))
