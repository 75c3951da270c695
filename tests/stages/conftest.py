"""The stage tier's shared projects: the tiny one with fewer images, and one whose CNN training resumes
exactly; data prepared in both."""

from __future__ import annotations

import pytest

from helpers.processes import stage
from helpers.project import edit_params, make_resumable


@pytest.fixture
def small(project):
    """The project with 100 training images and 50 for validation, data prepared."""
    edit_params(project, **{"data.train_limit": 150, "data.val_size": 50})
    stage("download", cwd=project)
    return project


@pytest.fixture
def resumable(project):
    return make_resumable(project)
