"""This checkout's tests. The parity options, fixtures and matrix come from the installed plugin
(parity.pytest_plugin, entry point pytest11); this file only marks the checkout so the plugin sets
up the Triton interpreter and the xdist thread counts for the repository's own tests too."""
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.pluginmanager.register(object(), "parity_repo_conftest")
