"""Atomic writes: the target holds either the old or the new content, never a partial file."""

from __future__ import annotations

import json

import pytest

from cifar_pipeline.core import atomic


def test_write_text_replaces_content(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic.write_text(target, "old")
    assert atomic.write_text(target, "new") == target
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_write_json_replaces_content(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_json(target, {"b": [1, 2], "a": None})
    assert json.loads(target.read_text()) == {"a": None, "b": [1, 2]}
    assert target.read_text().endswith("\n")


def failing_writer(tmp):
    tmp.write_text("partial")
    raise RuntimeError("disk full")


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_with(target, failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        atomic.write_with(tmp_path / "out.txt", failing_writer)
    assert list(tmp_path.iterdir()) == []
