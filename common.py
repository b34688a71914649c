"""
The few helpers that several modules share: atomic file writes, JSON results, the default device.
"""

import contextlib
import json
import math
import os

import torch


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open `path` for writing through '<path>.<pid>.tmp' in the same directory; on success the file is
    flushed, fsynced and renamed onto `path`, on failure removed. A reader, or a run killed halfway,
    never sees a half-written file: only the old one or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def save_json(obj, path):
    """Write obj as indented JSON, atomically. NaN and infinity are refused (ValueError naming the first
    one): a result file never holds a number that is not one."""
    bad = _first_non_finite(obj)
    if bad is not None:
        raise ValueError(f"{path}: refusing to write a non-finite number at {bad}")
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def _first_non_finite(obj, where="$"):
    """JSON path of the first NaN / inf float in obj, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_non_finite(v, f"{where}.{k}" if isinstance(obj, dict) else f"{where}[{k}]")
        if bad is not None:
            return bad
    return None


def default_device():
    """cuda if present, else Apple's mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
