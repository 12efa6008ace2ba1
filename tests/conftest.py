"""Options of the whole test-suite (pytest only takes options from the initial conftest)."""

import pytest


def pytest_configure(config):
    """One torch thread: the suite runs beside the book build, whose kernels take the cores;
    with two threads competing for them, torch's small ops were measured 2-6x slower."""
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same random state, whatever ran before it: a result cannot
    depend on the order of the tests (the random state outside the test is left as it was)."""
    from coursepkg.runtime import fork_rng

    with fork_rng(seed=0):
        yield
