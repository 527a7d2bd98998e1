import os

import numpy as np
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
