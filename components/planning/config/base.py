"""What every config model shares: the base model (camelCase keys, unknown keys refused, frozen), the
project's namespace, the name patterns, and the validators that need the validation context."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic.alias_generators import to_camel

from ..catalog import UnknownInstanceType

NAMESPACE = "efa-infra"
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,23}$"
JOB_NAMESPACE = "efa-jobs"
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS label, as Kubernetes names namespaces


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        use_attribute_docstrings=False, defer_build=True,
    )


def known_type(name: str, value: str, info: ValidationInfo) -> str:
    """A type the catalog in the validation context knows (the shipped data plus the stack's declarations)."""
    cat = (info.context or {}).get("catalog")
    if cat is not None and name not in cat:
        try:
            cat.get(name)
        except UnknownInstanceType as exc:
            raise ValueError(f"{exc}; declare a type the data lacks under {NAMESPACE}:instanceTypes") from None
    return value
