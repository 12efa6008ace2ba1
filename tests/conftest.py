"""Options of the whole test-suite (pytest only takes options from the initial conftest)."""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--notebook",
        action="append",
        default=[],
        metavar="PATH",
        help="tests/grading: grade this notebook (repeatable) instead of the reference solutions",
    )


@pytest.fixture(scope="session")
def notebook_option(request) -> list[str]:
    """The paths given with --notebook (empty: the reference solutions)."""
    return request.config.getoption("--notebook")
