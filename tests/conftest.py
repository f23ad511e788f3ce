import os
import sys

import torch

# flowcheck.py lives beside the tests
sys.path.insert(0, os.path.dirname(__file__))
# small tensors: one thread is fastest and makes timings and results repeatable
torch.set_num_threads(1)
