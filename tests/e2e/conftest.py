"""pytest wiring: one callrelay server per test module; its log is shown when a test fails, and
a panic logged by the server fails the test it happened in."""

import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Server  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    before_stop = srv.log_size()
    code = srv.stop()
    at_shutdown = srv.log_since(before_stop)
    srv.cleanup()
    if "panicked at" in at_shutdown:
        i = at_shutdown.index("panicked at")
        warnings.warn(f"callrelay panicked while shutting down: {at_shutdown[i : i + 300]}", stacklevel=1)
    assert code == 0, f"callrelay did not exit cleanly on SIGTERM (exit code {code})"


@pytest.fixture(autouse=True)
def _server_log_checks(request):
    """Prints what the server logged during a failed test; fails a test during which it panicked."""
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    start = srv.log_size()
    yield
    log = srv.log_since(start)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n----- callrelay log during {request.node.name} (last 8000 chars) -----\n{log[-8000:]}")
    if "panicked at" in log:
        i = log.index("panicked at")
        pytest.fail(f"callrelay panicked during the test:\n{log[max(0, i - 200) : i + 1500]}")
    assert srv.alive(), f"callrelay exited during the test:\n{log[-3000:]}"
