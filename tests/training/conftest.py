"""The training tests' tiny BEIR folder, the ``beir`` fixture, now lives in tests/conftest.py (tests/indexing and
tests/test_security.py use it too). ``LEAKED`` stays importable from here for the tests that import it."""

from tests.conftest import LEAKED  # noqa: F401
