"""
What training reads: the tokenized corpus on disk (one memmapped token file per language and split,
written by the prepare step, corpora/prepare.py), as random batches and fixed evaluation windows.
docs/METHOD.md §1 describes the data and languages. Dataset.load() needs neither tiktoken nor the
bundled-text packages.
"""

import json
import os

import numpy as np
import torch

SPLITS = ("train", "val", "parallel")
O200K_N_VOCAB = 200019                            # o200k_base's largest token id + 1
MAX_VOCAB = -(-(O200K_N_VOCAB + 1) // 64) * 64   # a compact vocabulary can hold every o200k id, rounded to 64


def default_cache(langs_spec, vocab_size, data_seed=0, data_dir=None, max_tokens_per_lang=0):
    """data_cache/<langs>-v<vocab>[-split<seed>][-<data_dir name>][-max<tokens>]: the cache directory
    that train.py and `python corpora/prepare.py` use unless told otherwise."""
    name = f"{str(langs_spec).replace(',', '_')[:60]}-v{vocab_size}"
    if data_seed:
        name += f"-split{data_seed}"
    if data_dir:
        name += "-" + os.path.basename(os.path.normpath(data_dir))
    if max_tokens_per_lang:
        name += f"-max{max_tokens_per_lang}"
    return os.path.join("data_cache", name)


# -----------------------------------------------------------------------------
# the vocabulary of a model: ids -> bytes (tokenizer.Tokenizer builds it and encodes text)

class Vocab:
    """The compact vocabulary over o200k_base (docs/METHOD.md §1), as training and evaluation need it.
    ids 0..255: single bytes; 256: EOT (document separator, 0 bytes); 257..: frequent o200k tokens;
    ids past the table (when the training text had fewer distinct tokens) are unused and decode to ""."""

    N_BYTES = 256

    def __init__(self, vocab_size, o200k_ids, token_bytes):
        assert len(o200k_ids) == len(token_bytes) <= vocab_size - self.N_BYTES - 1
        self.vocab_size = vocab_size
        self.eot = self.N_BYTES
        self.o200k_ids = [int(i) for i in o200k_ids]  # o200k id of compact id eot+1+i
        self._bytes = ([bytes([b]) for b in range(self.N_BYTES)] + [b""] + [bytes(b) for b in token_bytes]
                       + [b""] * (vocab_size - self.N_BYTES - 1 - len(token_bytes)))

    def decode(self, ids):
        """ids (list / np array / tensor) -> str; EOT decodes to ''. Invalid UTF-8 (only possible for
        id sequences that no encode() produced, e.g. samples) becomes U+FFFD."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        try:
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                raise IndexError
            data = b"".join([self._bytes[i] for i in ids])
        except (IndexError, TypeError):
            raise ValueError(f"decode: ids must be ints in [0, {self.vocab_size})") from None
        return data.decode("utf-8", errors="replace")

    def token_bytes(self):
        """UTF-8 byte length of every id (0 for EOT and unused ids); for bits-per-byte."""
        return [len(b) for b in self._bytes]

    # (de)serialisation: JSON-able, decode needs nothing but this dict
    def state_dict(self):
        n = len(self.o200k_ids)
        return {"type": "o200k_compact", "version": 1, "vocab_size": self.vocab_size, "eot": self.eot,
                "o200k_ids": list(self.o200k_ids),
                "token_hex": [b.hex() for b in self._bytes[self.eot + 1:self.eot + 1 + n]]}

    @classmethod
    def from_state_dict(cls, d):
        if d.get("type") != "o200k_compact" or d.get("eot") != cls.N_BYTES:
            raise ValueError(f"not an o200k_compact tokenizer state (type={d.get('type')!r})")
        return cls(int(d["vocab_size"]), d["o200k_ids"], [bytes.fromhex(h) for h in d["token_hex"]])


# -----------------------------------------------------------------------------
# the dataset on disk

class Dataset:
    """Tokenized corpus: out_dir/<lang>.<split>.bin (uint32, memmapped) + meta.json."""

    splits = SPLITS

    def __init__(self, out_dir, meta):
        self.out_dir = out_dir
        self.meta = meta
        self.langs = list(meta["langs"])
        self.tokenizer = Vocab.from_state_dict(meta["vocab"])   # ids -> bytes (no encoding needed here)
        self._mm = {}

    @classmethod
    def load(cls, out_dir):
        path = os.path.join(out_dir, "meta.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no meta.json in {out_dir}: make it with `python corpora/prepare.py --langs LANGS --out {out_dir}`")
        with open(path, encoding="utf-8") as f:
            return cls(out_dir, json.load(f))

    def tokens(self, lang, split):
        """All token ids of one language and split (np.memmap, uint32; documents end with EOT)."""
        if lang not in self.langs or split not in self.splits:
            raise ValueError(f"unknown lang/split {lang}/{split}; langs: {' '.join(self.langs)}; "
                             f"splits: {' '.join(self.splits)}")
        key = (lang, split)
        if key not in self._mm:
            path = os.path.join(self.out_dir, f"{lang}.{split}.bin")
            self._mm[key] = (np.memmap(path, dtype=np.uint32, mode="r") if os.path.getsize(path)
                             else np.zeros(0, dtype=np.uint32))  # an empty file cannot be memmapped
        return self._mm[key]

    def n_tokens(self, lang, split):
        return self.meta["stats"][lang][split]["tokens"]

    def _check_length(self, data, lang, split, block_size):
        if len(data) >= block_size + 1:
            return
        st = self.meta["stats"][lang]
        n_docs = st["train"]["docs"] + st["val"]["docs"]
        advice = f"use a smaller block_size or more text (data_dir) for {lang}"
        if split != "parallel" and st[split]["docs"] == 0:  # more text in one document would not help
            advice = (f"{lang} has {n_docs} document{'s' * (n_docs != 1)} and train/val are split by whole "
                      f"documents: split its text into several (lines of a .jsonl, blank-line-separated "
                      f"paragraphs of a .txt)")
        raise ValueError(f"{lang}/{split} has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}; "
                         f"{advice}")

    def get_batch(self, split, lang, batch_size, block_size, generator=None, device="cpu"):
        """batch_size random windows of one language: x, y int64 (B, T), y = x shifted by one."""
        data = self.tokens(lang, split)
        self._check_length(data, lang, split, block_size)
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
        idx = ix[:, None] + np.arange(block_size + 1)  # (B, T+1)
        xy = torch.from_numpy(data[idx].astype(np.int64))  # (B, T+1)
        return _to_device(xy[:, :-1].contiguous(), device), _to_device(xy[:, 1:].contiguous(), device)

    def sampling_probs(self, alpha=0.3):
        """Temperature sampling over languages: p(lang) ∝ n_train_tokens ** alpha."""
        n = np.array([self.n_tokens(lang, "train") for lang in self.langs], dtype=np.float64)
        w = np.where(n > 0, n, 0.0) ** alpha
        w = w / w.sum()
        return {lang: float(p) for lang, p in zip(self.langs, w)}

    def mixed_batch(self, split, batch_size, block_size, probs=None, generator=None, device="cpu"):
        """Each sequence from a language drawn from probs (default sampling_probs(0.3)).
        Returns x, y int64 (B, T) and lang_idx int64 (B,) indexing self.langs."""
        probs = self.sampling_probs() if probs is None else probs
        unknown = [l for l in probs if l not in self.langs]
        if unknown:
            raise ValueError(f"probs has languages not in the dataset: {' '.join(unknown)}")
        p = torch.tensor([float(probs.get(l, 0.0)) for l in self.langs], dtype=torch.float64)
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be non-negative with a positive sum")
        lang_idx = torch.multinomial(p, batch_size, replacement=True, generator=generator)  # (B,)
        x = torch.empty((batch_size, block_size), dtype=torch.int64)
        y = torch.empty((batch_size, block_size), dtype=torch.int64)
        for li in lang_idx.unique().tolist():
            rows = (lang_idx == li).nonzero().squeeze(1)
            x[rows], y[rows] = self.get_batch(split, self.langs[li], len(rows), block_size, generator)
        return _to_device(x, device), _to_device(y, device), lang_idx.to(device)

    def spread_windows(self, lang, split, block_size, n):
        """n windows of block_size+1 tokens whose starts are spread evenly over the whole split (they
        overlap when the split is short): a fixed sample of a language's text that does not depend on any
        seed. x, y int64 (n, T); y = x shifted by one."""
        data = self.tokens(lang, split)
        self._check_length(data, lang, split, block_size)
        starts = np.linspace(0, len(data) - block_size - 1, n).round().astype(np.int64)  # (n,)
        xy = torch.from_numpy(np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def eval_windows(self, lang, split, block_size, max_windows=None):
        """Deterministic, non-overlapping windows of block_size+1 tokens from the start of the split:
        x, y int64 (N, T) with N = min(len // (T+1), max_windows); y = x shifted by one."""
        data = self.tokens(lang, split)
        self._check_length(data, lang, split, block_size)
        n = len(data) // (block_size + 1)
        if max_windows is not None:
            n = min(n, max_windows)
        xy = torch.from_numpy(np.asarray(data[:n * (block_size + 1)], dtype=np.int64).reshape(n, block_size + 1))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def _to_device(t, device):
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
