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


import pytest  # noqa: E402


@pytest.fixture
def no_text_packages(monkeypatch):
    """This process as on a machine without notofonttools, django and kolibri (and their versions)."""
    import importlib.metadata

    from corpora import bundled as corpus

    def missing(pkg):
        raise importlib.metadata.PackageNotFoundError(pkg)
    monkeypatch.setattr(corpus, "_udhr_dir", lambda: None)
    monkeypatch.setattr(corpus, "_catalog_roots", lambda: [])
    monkeypatch.setattr(importlib.metadata, "version", missing)
