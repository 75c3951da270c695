"""Pydantic's validation errors of params.yaml as one plain line each, naming the key and the fix."""

from __future__ import annotations

import difflib

from pydantic import BaseModel

from cifar_pipeline.core import yaml12


def _schema_keys(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model else []


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `loc` (for did-you-mean hints)."""
    current: type[BaseModel] | None = root
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "finite_number": "a finite number",
    "model_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
}


def _quoted_value(value: object, kind: str) -> bool:
    """Whether value is a string that, unquoted, would be what kind asks for (`"32"` for an integer)."""
    if not isinstance(value, str) or kind == "string_type":
        return False
    parsed = yaml12.load(value) if value.strip() else None
    wanted = {"int_type": int, "float_type": (int, float), "bool_type": bool}.get(kind, ())
    return isinstance(parsed, wanted) and (kind == "bool_type" or not isinstance(parsed, bool))


MOVED_KEYS = {
    "runtime.progress": "`progress` at the top level",
    "runtime.compile": "each model's own `compile` (`cnn.compile`, `resnet34.compile`, `resnet18.compile`)",
}


def describe(error: dict, root: type[BaseModel]) -> str:
    """One line for one of pydantic's errors; `root` is the schema the error's location starts in."""
    loc = error["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        if path in MOVED_KEYS:
            return f"`{path}` moved: write it as {MOVED_KEYS[path]}"
        valid = _schema_keys(_model_at(root, loc))
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown key `{path}`{hint}; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return f"`{path}` is required but missing"
    ctx = error.get("ctx", {})
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{path} must be {op} {bound}, got {value!r}"
    if kind in TYPE_NAMES:
        quoted = " (a string: remove the quotes)" if _quoted_value(value, kind) else ""
        return f"{path} must be {TYPE_NAMES[kind]}, got {value!r}{quoted}"
    if kind == "literal_error":
        return f"{path} must be one of {ctx.get('expected')}, got {value!r}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a whole-section check: its message names the keys and values itself
        return f"{path}: {message}"
    return f"{path}: {message}, got {value!r}"
