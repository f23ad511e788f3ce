import os
import sys

import torch

# flowcheck.py lives beside the tests
sys.path.insert(0, os.path.dirname(__file__))
# small tensors: one thread is fastest and makes timings and results repeatable
torch.set_num_threads(1)

import pytest


@pytest.fixture(autouse=True)
def _seed_every_test():
    # every test starts from the same RNG state, so a test's draws do not depend on which
    # tests ran before it (-k, -x, a new test file) and a failure reproduces alone
    torch.manual_seed(0)
    yield
