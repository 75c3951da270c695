"""How every params section validates: strict types (no bool for an int, no "32" for a number), no unknown
keys, no .inf or .nan anywhere, immutable."""

from __future__ import annotations

from pydantic import ConfigDict

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
