"""The ``cohorts`` section of a policy: conditions on a request (``Match``), semantic rules, and cohorts.

Part of :mod:`gateway.policy.schema` (which re-exports every name here), kept apart so each module reads in one
sitting.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.policy.types import NameOrNames, PositiveFloat, Strict, ValueMatch


class SemanticSpec(Strict):
    """Nearest-example cosine similarity between the request's text and examples, in a ``kind: embedding`` model's
    vector space (docs/semantic.md)."""

    model: str = Field(min_length=1, description="a kind: embedding model of this policy")
    examples: list[Annotated[str, Field(min_length=1, max_length=8192)]] | None = Field(
        default=None, min_length=1, max_length=10_000
    )
    examples_file: str | None = Field(
        default=None, min_length=1, description="a text file, one example a line, relative to the policy file"
    )
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        default=0.8, description="the rule holds when the nearest example's cosine similarity is at least this"
    )
    text: Literal["last_user", "user", "all"] = Field(
        default="last_user", description="what is embedded: the last user message, every user message, or all"
    )
    timeout_s: PositiveFloat = Field(
        default=0.05, description="budget for the request's embedding; slower or failing: the rule does not hold"
    )

    @model_validator(mode="after")
    def _one_source(self) -> SemanticSpec:
        if (self.examples is None) == (self.examples_file is None):
            raise ValueError("a semantic rule needs exactly one of 'examples' or 'examples_file'")
        return self


class Match(Strict):
    """Conditions on a request. Keys in one mapping must all hold; use ``any``/``all``/``not`` to combine."""

    header: dict[str, ValueMatch] | None = None
    metadata: dict[str, ValueMatch] | None = None
    user: NameOrNames | None = None
    api_key: NameOrNames | None = None
    model: NameOrNames | None = None
    content: str | None = Field(default=None, description="regex searched in the user messages' text")
    has_tools: bool | None = None
    response_format: (
        Literal["json_object", "json_schema", "text"] | list[Literal["json_object", "json_schema", "text"]] | None
    ) = None
    min_prompt_chars: Annotated[int, Field(ge=0)] | None = None
    max_prompt_chars: Annotated[int, Field(ge=0)] | None = None
    semantic: SemanticSpec | None = None
    any: list[Match] | None = Field(default=None, min_length=1)
    all: list[Match] | None = Field(default=None, min_length=1)
    not_: Match | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not self.model_fields_set:
            raise ValueError("a match needs at least one condition")
        return self


class CohortSpec(Strict):
    """A named slice of traffic. Cohorts are tried in order; the first whose ``match`` holds wins."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: Match | None = None
    default: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _match_or_default(self) -> CohortSpec:
        if self.default and self.match is not None:
            raise ValueError("the default cohort takes every request no other cohort matched; drop its 'match'")
        if not self.default and self.match is None:
            raise ValueError("a cohort needs a 'match' (or 'default: true')")
        return self
