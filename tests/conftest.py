import os
import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run builds its embedded models in a fresh cache, never the user's."""
    old = os.environ.get("FEATGRAPH_CACHE")
    os.environ["FEATGRAPH_CACHE"] = str(tmp_path_factory.mktemp("featgraph_cache"))
    yield
    if old is None:
        os.environ.pop("FEATGRAPH_CACHE", None)
    else:
        os.environ["FEATGRAPH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_embedded(_isolated_cache):
    from analyses.tiny_model import TINY, load_embedded

    return load_embedded(TINY, progress=False)
