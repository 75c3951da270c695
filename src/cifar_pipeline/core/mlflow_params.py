"""The `mlflow` section of params.yaml: where runs are tracked and how models are registered."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from cifar_pipeline.core.strict import STRICT

TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


class Strict(BaseModel):
    model_config = STRICT


def tracking_uri_problem(uri: str) -> str | None:
    """Why uri can't be an MLflow tracking store, or None if its form is fine."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme:
        return "is not a URI: use sqlite:///<path>.db, http(s)://<host>:<port> or another MLflow store URI"
    if scheme.split("+")[0] not in TRACKING_SCHEMES:
        return f"has the unknown scheme `{scheme}`; MLflow stores use one of {', '.join(TRACKING_SCHEMES)}"
    if scheme == "sqlite" and (not rest.startswith("/") or not rest.strip("/")):
        return "must name a database file: sqlite:///<relative path>.db or sqlite:////<absolute path>.db"
    if scheme in ("http", "https") and not rest.split("/")[0]:
        return "has no host: use http(s)://<host>:<port>"
    return None


class MlflowParams(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Annotated[str, Field(min_length=1)] = "cifar10"
    system_metrics: bool = False
    register_models: bool = True
    # letters, digits, '.', '_', '-' only: the name goes into models:/<name>@champion URIs
    registered_model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]*$")] = "cifar10-"

    @field_validator("tracking_uri")
    @classmethod
    def _known_store(cls, v: str) -> str:
        problem = tracking_uri_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("experiment")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if v != v.strip() or not v:
            raise ValueError("must be a name without leading or trailing spaces, e.g. cifar10")
        return v
