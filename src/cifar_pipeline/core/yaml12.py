"""params.yaml read as DVC writes it: YAML 1.2, where `5e-05` and `1e-3` are numbers (PyYAML follows YAML 1.1,
which reads a number in exponent form without a dot as a string)."""

from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    pass


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load(text: str) -> object:
    return yaml.load(text, Loader=Loader)
