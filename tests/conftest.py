import os
import sys

# tests import the top-level modules (model, data, train, ...) from the repository root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
torch_threads = os.environ.get("NANODMOE_TEST_THREADS")
if torch_threads:
    import torch
    torch.set_num_threads(int(torch_threads))
