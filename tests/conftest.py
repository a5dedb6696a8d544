"""Shared pytest fixtures."""
from __future__ import annotations

import importlib
import os

import pytest

BACKENDS = ("ops", "reference")

try:   # the fuzz tests' profiles (tests/fuzz_helpers.py); hypothesis is a test extra
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("fuzz-ci", max_examples=60, deadline=None,
                              suppress_health_check=_slow_ok)
    settings.register_profile("fuzz-long", deadline=None, suppress_health_check=_slow_ok,
                              max_examples=int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", 2000)))
    settings.load_profile("fuzz-long" if os.environ.get("FASTRNN_FUZZ") == "long"
                          else "fuzz-ci")


def pytest_terminal_summary(terminalreporter):
    """The number of API calls the fuzz tests made (tests/fuzz_helpers.py)."""
    import sys
    helpers = sys.modules.get("fuzz_helpers")
    if helpers is not None and helpers.CALLS["n"]:
        terminalreporter.write_line(f"fuzz: {helpers.CALLS['n']} fuzzed API calls")


def import_backend(name: str):
    """Import ``fastrnn.<name>``; skip only when that module (or the C extension) is absent.

    Any other import error fails the test. Set ``FASTRNN_REQUIRE_BACKENDS=1`` (CI) to turn
    the skip into a failure, so a missing build can never pass silently.
    """
    module_name = f"fastrnn.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, "fastrnn._core") or os.environ.get(
                "FASTRNN_REQUIRE_BACKENDS"):
            raise
        hint = ("build the C extension with `pip install -e .`" if name == "ops"
                else "it is not written yet")
        pytest.skip(f"{module_name} is not importable ({exc}); {hint}")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend module in turn: ``fastrnn.ops`` (C) and ``fastrnn.reference`` (NumPy)."""
    return import_backend(request.param)


@pytest.fixture(autouse=True, scope="session")
def one_thread_by_default():
    """Tests run single-threaded unless they set threads themselves (the thread tests in
    test_ops_vs_reference.py do): on a shared 2-core machine a second thread that is not
    scheduled stalls every small BLAS call of a training loop, and no result depends on
    the thread count."""
    import fastrnn
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before)


# FASTRNN_TEST_ISA=portable|avx2|avx512 forces one ISA level for the whole session (the
# sanitizer stage, .ci/sanitize, runs the kernel tests once per level).
_FORCED_ISA = os.environ.get("FASTRNN_TEST_ISA")


def _isa_names():
    if _FORCED_ISA:
        return [_FORCED_ISA]
    try:
        from fastrnn import _core
    except ImportError:
        return ["portable"]
    return list(_core.available_isas())


@pytest.fixture(autouse=True, scope="session")
def forced_isa():
    """The ISA level FASTRNN_TEST_ISA names, for every test (no-op when unset)."""
    if _FORCED_ISA:
        from fastrnn import _core
        assert _core.set_isa(_FORCED_ISA) == _FORCED_ISA, \
            f"FASTRNN_TEST_ISA={_FORCED_ISA}, but this CPU has only {_core.available_isas()}"
    yield


@pytest.fixture(params=_isa_names())
def isa(request):
    """Each instruction-set variant of the kernels this CPU has, forced in turn."""
    from fastrnn import _core
    previous = _core.get_isa()
    assert _core.set_isa(request.param) == request.param
    yield request.param
    _core.set_isa(previous)


@pytest.fixture
def restore_threads():
    """fastrnn.set_num_threads, with the thread count restored afterwards."""
    import fastrnn
    previous = fastrnn.get_num_threads()
    yield fastrnn.set_num_threads
    fastrnn.set_num_threads(previous)
