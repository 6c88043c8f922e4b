from tests.training.conftest import beir  # noqa: F401  (the tiny BEIR folder fixture)
