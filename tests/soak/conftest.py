"""The soak tests: the long versions of the fault tests (110 pods, ...),
with figures printed. They use the integration tests' lab and fixtures and
run only when asked for with `-m soak` (`make soak`); anywhere else they
are skipped.

Environment: as tests/integration/conftest.py (CRIMUX_BUILDDIR,
CRIMUX_TEST_BRIDGE, CRIMUX_TEST_SUBNET, ...).
"""

import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# The integration conftest under a name of its own (pytest already knows a
# module called "conftest"): its fixtures are this directory's too.
_spec = importlib.util.spec_from_file_location(
    "crimux_integration_conftest", os.path.join(HERE, os.pardir, "integration", "conftest.py"))
integration = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = integration  # tests import stop_checked from it
_spec.loader.exec_module(integration)

lab = integration.lab
crimuxd_binary = integration.crimuxd_binary
dockerd = integration.dockerd
stop_checked = integration.stop_checked


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: a long fault test, run by `make soak` only")


def pytest_collection_modifyitems(config, items):
    asked = "soak" in (config.getoption("-m") or "")
    not_asked = pytest.mark.skip(reason="a soak test: run it with `make soak` (pytest -m soak)")
    not_root = pytest.mark.skip(reason="soak tests need root (containerd, CNI, mounts)")
    for item in items:
        if not str(item.path).startswith(HERE + os.sep):
            continue
        if "soak" in item.keywords and not asked:
            item.add_marker(not_asked)
        elif os.geteuid() != 0:
            item.add_marker(not_root)
