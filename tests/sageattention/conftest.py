"""Fixtures of the sageattention tests (helpers: sage_helpers.py)."""

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_reference_warning():
    """The CPU reference path warns once per process; keep test output readable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="sageattention: ", category=RuntimeWarning)
        yield
