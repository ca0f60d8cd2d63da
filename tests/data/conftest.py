import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import media`


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo dataset (synthetic voice, so it is the same with or without espeak-ng)."""
    from avfast.data import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    manifest = make_demo_data(out, num_movies=3, shots_per_movie=2, voice="synthetic", seed=0)
    return manifest
