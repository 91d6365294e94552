import contextlib

import numpy as np
import pytest
import torch
from hypothesis import settings

from captum_ext._model_state import ModelState

torch.set_num_threads(1)
settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@contextlib.contextmanager
def model_untouched(model: torch.nn.Module):
    """Assert that the body leaves training flags, requires_grad, .grad, buffers and params as they were."""
    before = ModelState.of(model)
    yield
    assert ModelState.of(model) == before, "the call changed the model's state"


@pytest.fixture
def untouched():
    return model_untouched
