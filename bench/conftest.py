"""The bench runs under the ppazam plugin (options, suite parametrization, report at the end)."""

from fixtures.plugin import (  # noqa: F401  (pytest finds hooks and fixtures by name here)
    ppazam_model,
    ppazam_queries,
    ppazam_run,
    pytest_addoption,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
