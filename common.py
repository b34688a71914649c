"""
The few helpers that several modules share: atomic file writes, JSON results, the device and the
process group (Env), the data identity of a checkpoint, and the checks of paths and devices.
"""

import contextlib
import json
import math
import os
import signal
import threading
from contextlib import nullcontext

import numpy as np
import torch


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open `path` for writing through '<path>.<pid>.tmp' in the same directory; on success the file is
    flushed, fsynced and renamed onto `path`, on failure removed. A reader, or a run killed halfway,
    never sees a half-written file: only the old one or the new one. A Ctrl-C during the write takes
    effect once the file is in place (cut short inside torch.save it would surface as a RuntimeError)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with sigint_deferred():
            with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def sigint_deferred():
    """Hold a Ctrl-C (SIGINT) back until the block ends, then raise KeyboardInterrupt. Only where Python's
    own handler is in place, in the main thread; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    got = []
    signal.signal(signal.SIGINT, lambda *_: got.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if got:
            raise KeyboardInterrupt


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


class Env:
    """Where and how we run. Under `torchrun --nproc_per_node=N train.py ...` every rank builds one."""

    def __init__(self, cfg):
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        if cfg["batch_size"] % self.world:   # every rank trains on its slice of the global batch
            raise SystemExit(f"error: --batch_size {cfg['batch_size']} must be divisible by the number of processes ({self.world})")
        dev = default_device() if cfg["device"] == "auto" else cfg["device"]
        if self.ddp:
            torch.distributed.init_process_group(backend="nccl" if dev == "cuda" else "gloo")
            if dev == "cuda":
                dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
                torch.cuda.set_device(dev)
        self.device = dev
        self.device_type = "cuda" if dev.startswith("cuda") else dev
        self.master = self.rank == 0        # only rank 0 logs and writes files
        use_bf16 = cfg["dtype"] == "bfloat16" or (
            cfg["dtype"] == "auto" and self.device_type == "cuda" and torch.cuda.is_bf16_supported())
        self.dtype = "bfloat16" if use_bf16 else "float32"
        self.use_compile = cfg["compile"] == "True" or (cfg["compile"] == "auto" and self.device_type == "cuda")
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.peak_flops = peak_flops(torch.cuda.get_device_name(dev)) if self.device_type == "cuda" else None

    def autocast(self):
        if self.dtype == "bfloat16":
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return nullcontext()

    def barrier(self):
        if self.ddp:
            torch.distributed.barrier()

    def print(self, *args, **kw):
        if self.master:
            print(*args, **kw)


def peak_flops(name):
    """bf16 dense peak of the GPU, for MFU (as nanoGPT/nanochat report it); None if unknown."""
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12),
                       ("4090", 165e12), ("3090", 71e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None


def check_device(name):
    """--device as one line when torch cannot use it here (before any checkpoint is read)."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name!r} is not a device; choose cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name}: this machine has no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"error: --device {name}: MPS is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: --device {name!r}: choose cpu, cuda, cuda:N or mps")


def data_fingerprint(dataset):
    """What decides the tokens of a data cache (corpora/prepare.py's meta.json); None for a wrapper without one."""
    return getattr(dataset, "meta", {}).get("fingerprint")


def find_data_cache(ckpt, ckpt_path):
    """The data cache a train.py checkpoint names (config["data_cache"], relative to where training ran:
    tried as given, then next to the checkpoint and in its parent folders); None when it names none."""
    dc = (ckpt.get("config") or {}).get("data_cache")
    if not dc:
        return None
    if os.path.isabs(dc) or os.path.exists(dc):
        return dc
    d = os.path.dirname(os.path.abspath(ckpt_path))
    for _ in range(3):
        if os.path.exists(os.path.join(d, dc)):
            return os.path.join(d, dc)
        d = os.path.dirname(d)
    return dc


def stale_data(saved, dataset):
    """Why a checkpoint or profile.json (`saved`) was made from other tokens than `dataset`'s, or None:
    a run is only ever continued, or scored, on the tokens it was trained on."""
    fp, now = saved.get("data_fingerprint"), data_fingerprint(dataset)
    if fp is not None and fp != now:
        return (f"was made from other tokens (data fingerprint {fp}; the data cache's is {now}: the corpus, "
                f"the languages or the vocabulary changed)")
    vocab = getattr(getattr(dataset, "tokenizer", None), "state_dict", None)   # None: a stand-in dataset
    if saved.get("vocab") and vocab is not None and saved["vocab"] != vocab():
        return "was trained with another vocabulary than the data cache's"
    return None


def nearest_existing(path):
    """The path itself, or its closest ancestor that exists (where a new file or folder would be made)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def unwritable(path, kind="file"):
    """Why `path` cannot be written as a `kind` ("file" or "folder"), or None: it is the other kind, it lies
    under a file, or there is no permission where it would be made. Checked before any work is spent."""
    path = os.path.abspath(path)
    if os.path.isdir(path) if kind == "file" else os.path.isfile(path):
        return f"is a {'folder' if kind == 'file' else 'file'}"
    at = nearest_existing(path if kind == "folder" else os.path.dirname(path))
    if not os.path.isdir(at):
        return f"lies under the file {at}"
    if not os.access(path if kind == "folder" and os.path.exists(path) else at, os.W_OK):
        return f"cannot be written (no permission in {at})"   # a file is replaced: its folder decides
    return None


# ----------------------------------------------------------------------------------------------------
# min-max scaling: D^_l of the per-layer deviations (group.select_layers), and the pictures' colour scale

def normalized(x, lo=None, hi=None):
    """(x - lo) / (hi - lo) clipped to [0, 1], lo and hi defaulting to x's min and max (NaN ignored);
    0 where hi <= lo. Of the per-layer deviations D_l this is D^_l; the text heatmaps and bars (and
    analysis/plots.py's pictures) share it, so that there is one min-max scaling."""
    x = np.asarray(x, dtype=np.float64)
    lo = np.nanmin(x) if lo is None else lo
    hi = np.nanmax(x) if hi is None else hi
    return np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
