"""The building blocks of the policy schema: the strict, frozen base model and the constrained value types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]
Scalar = str | int | float | bool
ValueMatch = Scalar | list[Scalar]
NameOrNames = str | list[str]
