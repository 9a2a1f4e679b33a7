"""Repository-level pytest setup: ``pytest --benchmark`` runs the benchmark suite.

pytest-benchmark only adds ``--benchmark-*`` options, so a bare ``--benchmark``
would be refused as unrecognised; here it means "run bench/ (and only the
benchmarks), instead of tests/".
"""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent / "bench"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("benchmark").addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite in bench/ (same as: pytest bench --benchmark-only)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("benchmark"):
        return
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # no paths given: bench/, not tests/
        config.args[:] = [str(BENCH_DIR)]
    if hasattr(config.option, "benchmark_only") and not config.option.benchmark_disable:
        config.option.benchmark_only = True
