"""
The prepare step: text -> the token files that training reads (data.py). The text comes from
corpora/bundled.py (the bundled packages, or your --data_dir corpus), the vocabulary from tokenizer.py;
docs/METHOD.md §1 describes the data and languages. train.py calls prepare() on first use.

    python corpora/prepare.py --langs 18         # prepare data_cache/18-v8192, prints a per-language table
    python corpora/prepare.py --langs 128 --data_dir DIR --workers 8 --max_tokens_per_lang 100000000

prepare(): three passes, each a list of tasks that worker processes run in order (--workers; the
   output does not depend on how many): (1) o200k-tokenize every document once (one task per bundled
   language, file shard or byte range of a big file, one document in memory at a time), cap each
   language at max_tokens_per_lang, split it by document into train / val (~5%, by a seeded hash of
   the text) and the UDHR's parallel articles; (2) count the train split's o200k tokens -> the compact
   vocabulary; (3) write out_dir/<lang>.<split>.bin (uint32, each document followed by EOT) and
   out_dir/meta.json (tokenizer, counts, sources, a fingerprint of the arguments: the same arguments
   reuse the cache). Passes 2-3 stream the token files in fixed-size blocks: a corpus larger than
   memory works.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from array import array

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # run as python corpora/prepare.py
    sys.path.insert(0, ROOT)
from common import atomic_open, save_json, unwritable  # noqa: E402
from corpora import bundled as corpus  # noqa: E402
from data import SPLITS, Dataset, default_cache  # noqa: E402
from tokenizer import O200K_EOT, O200K_N_VOCAB, Tokenizer, check_vocab_size, o200k_encoding  # noqa: E402

VAL_FRACTION = 0.05  # share of documents in the val split
MIN_VAL_DOCS = 3     # ... but at least this many
CORPUS_VERSION = 1   # bump when the text extraction (corpora/bundled.py) or the split rules change (invalidates caches)
CHUNK_BYTES = 64 << 20  # plain user corpus files are tokenized in byte ranges of this size, one task each


# -----------------------------------------------------------------------------
# preparing the on-disk cache

def _doc_hash(text, seed):
    """64-bit seeded hash of a document's text (decides train vs val)."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode())
    return int.from_bytes(h.digest(), "little")


def _assign_splits(hashes, n_tokens, parallel, min_tokens):
    """Per document 0 (train) / 1 (val) / 2 (parallel). Val = the documents with the smallest hashes:
    VAL_FRACTION of them, at least MIN_VAL_DOCS (at most half), grown until they hold min_tokens
    (o200k) tokens but not past a quarter of the documents. Equal texts have equal hashes, so never straddle the cut."""
    split = np.where(parallel, 2, 0).astype(np.int8)
    cand = np.nonzero(~parallel)[0]
    order = cand[np.argsort(hashes[cand], kind="stable")]
    n = len(order)
    n_val = min(max(MIN_VAL_DOCS, math.ceil(VAL_FRACTION * n)), n // 2)
    cum = np.cumsum(n_tokens[order])
    if n_val > 0 and cum[n_val - 1] < min_tokens:  # grow towards min_tokens, up to a quarter of the docs
        n_val = max(n_val, min(int(np.searchsorted(cum, min_tokens)) + 1, n // 4))
    while 0 < n_val < n and hashes[order[n_val]] == hashes[order[n_val - 1]]:
        n_val += 1  # keep duplicates together
    split[order[:n_val]] = 1
    return split


def _append_file(dst, src):
    """Append file src to dst (creating it) and remove src."""
    if not os.path.exists(dst):
        os.replace(src, dst)
        return
    with open(dst, "ab") as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 24)
    os.remove(src)


# The three passes below are tasks for map_: the builtin map, or the ordered map of a pool of spawned
# worker processes (so they are top-level functions taking one argument). Every task writes its own
# files and the results are used in task order, so the output does not depend on the number of workers.

@contextlib.contextmanager
def _mapper(workers):
    """An ordered, lazy map: the builtin one (workers <= 1) or one over a pool of spawned processes
    that submits tasks only 2 * workers ahead of the result being read (pool.map would submit them
    all at once), so that pass 1 can stop starting a language's tasks once its cap is reached.
    (Unlike multiprocessing.Pool, which restarts dying workers forever, the pool fails with
    BrokenProcessPool when a worker cannot start, e.g. when a script calls prepare() without
    `if __name__ == "__main__":`.)"""
    if workers <= 1:
        yield map
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def ordered_map(fn, jobs):
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    try:
        yield ordered_map
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, do not run the tasks still queued


def default_workers():
    """min(CPUs this process may use, 8)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n or 1, 8))


Unit = collections.namedtuple("Unit", "lang path start end size last")  # one task of pass 1: a bundled
# language (path None, size 1) or the byte range [start, end) of a user corpus file (size: its bytes;
# last: the file's last range)


def _units(langs, data_dir):
    """Pass 1's tasks in output order: each bundled language whole; each user corpus file of each
    language (in reading order) cut by corpus.byte_ranges(). A file that cannot be read fails here."""
    if data_dir is None:
        return [Unit(lang, None, 0, None, 1, True) for lang in langs]
    units = []
    for lang in langs:
        for path in corpus.language_files(data_dir, lang):
            ranges = corpus.byte_ranges(path, CHUNK_BYTES)
            for i, (start, end) in enumerate(ranges):
                size = (os.path.getsize(path) if end is None else end) - start
                units.append(Unit(lang, path, start, end, size, i == len(ranges) - 1))
    return units


def _tokenize_unit(job):
    """Pass 1 task: o200k-tokenize the documents of one Unit, one at a time, into scratch/shard.<i>
    (uint32), stopping once max_tokens were read (0: never). Returns i and the documents' metadata
    (token and byte counts, the split hash, which ones are parallel text), or i and the ValueError of
    a bad file: _tokenize raises it unless a cap made this unit unneeded (as with fewer workers)."""
    i, unit, seed, max_tokens, scratch = job
    enc = o200k_encoding()  # built once per process
    meta = {"n_tok": array("q"), "n_bytes": array("q"), "hash": array("Q"), "parallel": array("b"), "tags": []}
    n_read = 0
    try:
        with open(os.path.join(scratch, f"shard.{i}"), "wb") as f:
            docs = iter(corpus.bundled_documents(unit.lang)) if unit.path is None else \
                corpus.read_user_documents(unit.path, unit.start, unit.end)
            for doc in docs:
                if max_tokens and n_read >= max_tokens:
                    break
                ids = enc.encode_ordinary(doc.text)
                n_read += len(ids)
                f.write(np.asarray(ids, dtype=np.uint32).tobytes())
                meta["n_tok"].append(len(ids))
                meta["n_bytes"].append(len(doc.text.encode("utf-8")))
                meta["hash"].append(_doc_hash(doc.text, seed))
                meta["parallel"].append(doc.split == "parallel")
                if doc.split == "parallel":
                    meta["tags"].append(doc.tag)
    except ValueError as e:
        return i, e
    return i, meta


def _tokenize(units, seed, min_tokens, max_tokens, scratch, map_):
    """Pass 1: tokenize the Units (in parallel with a pool's map_) and append their shards to
    scratch/<lang> in unit order. With max_tokens, a language keeps its documents (whole, in reading
    order) until it holds max_tokens o200k tokens: its later units are not started, and those already
    running are cut or dropped here, in order, so the result does not depend on the workers. Then
    each language's splits are decided. Returns {lang: {"split": per document 0/1/2, "offsets": token
    offsets into scratch/<lang>, "n_bytes", "parallel_articles"}}."""
    parts = {u.lang: [] for u in units}
    n_read = dict.fromkeys(parts, 0)  # o200k tokens kept per language
    docs_in_file = collections.Counter()

    def full(lang):
        return max_tokens and n_read[lang] >= max_tokens

    jobs = ((i, u, seed, max_tokens, scratch) for i, u in enumerate(units) if not full(u.lang))  # lazy
    in_bytes = units[0].path is not None  # progress in bytes of user files, or in bundled languages
    with tqdm(total=sum(u.size for u in units), desc="tokenize", unit="B" if in_bytes else "lang",
              unit_scale=in_bytes, unit_divisor=1024) as bar:
        for i, meta in map_(_tokenize_unit, jobs):
            unit, shard = units[i], os.path.join(scratch, f"shard.{i}")
            bar.update(unit.size)
            if full(unit.lang):  # started before the language's cap was reached
                os.remove(shard)
                continue
            if isinstance(meta, ValueError):
                raise meta
            if max_tokens:
                _keep_first(meta, shard, max_tokens - n_read[unit.lang])
            n_read[unit.lang] += sum(meta["n_tok"])
            docs_in_file[unit.path] += len(meta["n_tok"])
            if unit.path and unit.last and docs_in_file[unit.path] == 0:
                raise ValueError(f"{unit.path}: no documents in this file (an empty shard?): delete it")
            _append_file(os.path.join(scratch, unit.lang), shard)
            parts[unit.lang].append(meta)
        bar.update(bar.total - bar.n)  # the units that a cap left unread
    return {lang: _language_info(lang, p, min_tokens) for lang, p in parts.items()}


def _keep_first(meta, shard, budget):
    """Cut a unit's documents to those that start before `budget` o200k tokens (the one crossing it
    stays whole): their metadata and the token file."""
    starts = np.cumsum(meta["n_tok"]) - meta["n_tok"]
    n = int(np.searchsorted(starts, budget))
    os.truncate(shard, 4 * sum(meta["n_tok"][:n]))
    meta["tags"] = meta["tags"][:sum(meta["parallel"][:n])]
    for key in ("n_tok", "n_bytes", "hash", "parallel"):
        meta[key] = meta[key][:n]


def _language_info(lang, parts, min_tokens):
    """Join the metadata of a language's units (in order) and assign every document its split."""
    def cat(key, dtype):
        return np.concatenate([np.frombuffer(p[key], dtype=dtype) for p in parts])

    n_tok = cat("n_tok", np.int64)
    if len(n_tok) == 0:
        raise ValueError(f"{lang}: no documents found")
    split = _assign_splits(cat("hash", np.uint64), n_tok, cat("parallel", np.int8).astype(bool), min_tokens)
    articles = sorted(int(t.split(":")[1]) for p in parts for t in p["tags"])
    return {"split": split, "offsets": np.concatenate([[0], np.cumsum(n_tok)]), "n_bytes": cat("n_bytes", np.int64),
            "parallel_articles": articles}


def _blocks(path, offsets, max_tokens=1 << 20):
    """Read a scratch file front to back in blocks of whole documents: yields (lo, hi, ids, lens) with
    ids the o200k ids of documents lo..hi-1 (uint32) and lens their token counts. A block holds about
    max_tokens ids (or one longer document), so memory does not grow with the corpus."""
    n_docs = len(offsets) - 1
    with open(path, "rb") as f:
        lo = 0
        while lo < n_docs:
            hi = int(np.searchsorted(offsets, offsets[lo] + max_tokens, side="right")) - 1
            hi = min(max(hi, lo + 1), n_docs)
            ids = np.frombuffer(f.read(4 * int(offsets[hi] - offsets[lo])), dtype=np.uint32)
            yield lo, hi, ids, np.diff(offsets[lo:hi + 1])
            lo = hi


def _with_eot(ids, lens, keep):
    """The ids of the kept documents of a block, each followed by O200K_EOT."""
    kept = ids[np.repeat(keep, lens)]
    return np.insert(kept, np.cumsum(lens[keep]), O200K_EOT)


def _count_train(job):
    """Pass 2 task: o200k token counts (np.int64, indexed by id) of one language's train split."""
    info, scratch_path = job
    counts = np.zeros(O200K_N_VOCAB, dtype=np.int64)
    for lo, hi, ids, lens in _blocks(scratch_path, info["offsets"]):
        counts += np.bincount(ids[np.repeat(info["split"][lo:hi] == 0, lens)], minlength=O200K_N_VOCAB)
    return counts


def _write_splits(job):
    """Pass 3 task for one language: map each split's documents to compact ids (+ EOT after each
    document), reading the scratch file once, into out_dir/<lang>.<split>.bin. Returns the counts."""
    lang, info, scratch_path, tok, out_dir = job
    lut, split = tok._lookup(), info["split"]
    stats = {name: {"docs": int((split == s).sum()), "bytes": int(info["n_bytes"][split == s].sum()), "tokens": 0,
                    "o200k_tokens": 0, "o200k_in_vocab": 0}  # o200k tokens, and those needing no byte fallback
             for s, name in enumerate(SPLITS)}
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(atomic_open(os.path.join(out_dir, f"{lang}.{name}.bin"))) for name in SPLITS]
        for lo, hi, ids, lens in _blocks(scratch_path, info["offsets"]):
            for s, name in enumerate(SPLITS):
                keep = split[lo:hi] == s
                chunk = _with_eot(ids, lens, keep)
                out = tok.map_o200k(chunk)
                files[s].write(out.tobytes())
                n_docs = int(keep.sum())
                stats[name]["tokens"] += len(out)
                stats[name]["o200k_tokens"] += len(chunk) - n_docs
                stats[name]["o200k_in_vocab"] += int((lut[chunk] >= 0).sum()) - n_docs
    return stats


def remove_stale_scratch(out_dir):
    """Delete the scratch.<pid> folders that a killed prepare left (their process is gone)."""
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        pid = name[len("scratch."):]
        if not (name.startswith("scratch.") and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)            # signal 0: is that process still running?
        except ProcessLookupError:
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        except PermissionError:
            pass                            # alive, another user's


def prepare(langs, out_dir, vocab_size=8192, data_dir=None, seed=0, min_tokens=1024, force=False, workers=None,
            tokenizer=None, max_tokens_per_lang=0, keep=None, rebuild=True):
    """Build (or reuse, when out_dir/meta.json has the same fingerprint) the tokenized corpus.
    langs: a corpora.bundled.resolve_langs() spec or a list of codes. min_tokens: the val split of each language
    is grown (in hash order, up to a quarter of the documents) until it holds at least this many o200k
    tokens. workers: processes preparing a data_dir corpus (None: min(CPUs, 8), or 1 for a corpus under
    CHUNK_BYTES; 1: this process only). The bundled corpus is small and always prepared in this process.
    The output does not depend on the number of workers. tokenizer: encode with this existing
    vocabulary instead of building one (new-language adaptation keeps the model's vocabulary).
    max_tokens_per_lang: read each language only until this many o200k tokens (whole documents, in
    reading order; 0 = all): a slice of a huge download. keep: (what, fingerprint) of something trained on
    this cache; a cache holding those tokens is then never rebuilt (a ValueError says what changed).
    rebuild=False (train.py): a complete cache of other tokens is refused, not rebuilt in place, since
    another run may have trained on it. Returns the Dataset; prints a per-language table of bytes and tokens."""
    t0 = time.time()
    langs = corpus.resolve_langs(langs, data_dir, cache=out_dir)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    check_vocab_size(vocab_size)
    if not isinstance(max_tokens_per_lang, int) or max_tokens_per_lang < 0:
        raise ValueError(f"max_tokens_per_lang={max_tokens_per_lang!r}: must be 0 (no cap) or a positive integer")
    data_dir = os.path.abspath(data_dir) if data_dir is not None else None
    sources = corpus.source_signature(langs, data_dir)
    args = {"langs": langs, "vocab_size": vocab_size, "data_dir": data_dir, "seed": seed, "min_tokens": min_tokens,
            "max_tokens_per_lang": max_tokens_per_lang, "corpus_version": CORPUS_VERSION,
            "parallel_articles": list(corpus.PARALLEL_ARTICLES), "val_fraction": VAL_FRACTION,
            "min_val_docs": MIN_VAL_DOCS, "doc_bytes": corpus.DOC_BYTES,
            "given_vocab": None if tokenizer is None else hashlib.sha256(
                json.dumps(tokenizer.state_dict(), sort_keys=True).encode()).hexdigest()[:16]}
    fingerprint = hashlib.sha256(json.dumps([args, sources], sort_keys=True).encode()).hexdigest()[:16]
    meta_path = os.path.join(out_dir, "meta.json")
    if not force and os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f)
        bins_ok = all(os.path.isfile(os.path.join(out_dir, f"{l}.{s}.bin")) for l in langs for s in SPLITS)
        if old.get("fingerprint") == fingerprint and bins_ok:
            print(f"data: reusing {out_dir} (fingerprint {fingerprint})")
            print_table(old)
            return Dataset(out_dir, old)
        if keep is not None and old.get("fingerprint") == keep[1]:   # rebuilding would lose a run's tokens
            raise ValueError(f"{out_dir} holds the tokens {keep[0]} was trained on (data fingerprint {keep[1]}), "
                             f"and its text or settings changed since (now {fingerprint}); restore the corpus, or "
                             f"pass another --out and --data_cache to train on the new text")
        if data_dir is None and not corpus.bundled_installed() and bins_ok and old.get("args") == args:
            # same settings, but the text it was built from is not here to check or rebuild: use it
            print(f"data: reusing {out_dir}, prepared from {old['source_signature'].get('packages')} "
                  f"(the bundled-text packages are not installed here)")
            print_table(old)
            return Dataset(out_dir, old)
        if not rebuild and bins_ok and old.get("fingerprint"):      # another run may stand on these tokens
            raise ValueError(f"{out_dir} holds tokens of other text or settings (data fingerprint "
                             f"{old['fingerprint']}, now {fingerprint}): a run may have trained on them; pass another "
                             f"--data_cache, or delete {out_dir} to rebuild it")
    if data_dir is None and not corpus.bundled_installed():
        raise ValueError(f"{out_dir} holds no complete data prepared with these settings, and the bundled-text "
                         f"packages are not installed here to build it: pip install -r requirements.txt")
    units = _units(langs, data_dir)  # an empty file, or parquet without pyarrow, fails here: before any change
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the bins are about to change: never leave a meta.json that lies
    if workers is None:  # starting processes takes seconds: only worth it for a corpus of a few chunks
        workers = default_workers() if sum(u.size for u in units) > CHUNK_BYTES else 1
    workers = 1 if data_dir is None else max(1, min(workers, len(units)))
    remove_stale_scratch(out_dir)
    scratch = os.path.join(out_dir, f"scratch.{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    try:
        with _mapper(workers) as map_:
            # pass 1: o200k-tokenize every document once into scratch/<lang>; decide the splits
            info = _tokenize(units, seed, min_tokens, max_tokens_per_lang, scratch, map_)
            # pass 2: o200k token frequencies of the training split (all languages) -> compact vocabulary
            tok = tokenizer
            if tok is not None and not isinstance(tok, Tokenizer):   # a data.Vocab (a Dataset's): add encoding
                tok = Tokenizer.from_state_dict(tok.state_dict())
            if tok is None:
                counts = sum(map_(_count_train, [(info[lang], os.path.join(scratch, lang)) for lang in langs]))
                tok = Tokenizer.from_counts(counts, vocab_size)
            # pass 3: compact ids -> <lang>.<split>.bin
            jobs = [(lang, info[lang], os.path.join(scratch, lang), tok, out_dir) for lang in langs]
            stats = dict(zip(langs, map_(_write_splits, jobs)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if data_dir is None:
        source_info = {lang: {**corpus.bundled_sources(lang), "parallel_articles": info[lang]["parallel_articles"]}
                       for lang in langs}
    else:
        source_info = {lang: {"files": [f["file"] for f in sources["files"][lang]]} for lang in langs}
    in_vocab = sum(stats[l]["train"]["o200k_in_vocab"] for l in langs)
    total = sum(stats[l]["train"]["o200k_tokens"] for l in langs)
    meta = {"format": 1, "fingerprint": fingerprint, "args": args, "langs": langs, "splits": list(SPLITS),
            "dtype": "uint32", "vocab": tok.state_dict(), "n_vocab_used": tok.eot + 1 + len(tok.o200k_ids),
            "coverage": in_vocab / max(total, 1), "stats": stats, "sources": source_info,
            "source_signature": sources, "prepare_seconds": round(time.time() - t0, 2)}
    save_json(meta, meta_path)
    print_table(meta)
    with_workers = f" with {workers} worker processes" if workers > 1 else ""
    print(f"data: prepared {out_dir} in {time.time() - t0:.1f}s{with_workers}")
    return Dataset(out_dir, meta)


def print_table(meta):
    """Per-language documents, bytes and tokens of every split, and the compact-vocab coverage."""
    stats = meta["stats"]
    print(f"{'lang':<5} {'docs tr/va/pa':>15} {'bytes train':>12} {'val':>9} {'parallel':>9} "
          f"{'tokens train':>13} {'val':>9} {'parallel':>9} {'B/tok':>6} {'cover':>6}")
    tot = {s: {"docs": 0, "bytes": 0, "tokens": 0} for s in SPLITS}
    for lang in meta["langs"]:
        st = stats[lang]
        tr = st["train"]
        docs = "/".join(str(st[s]["docs"]) for s in SPLITS)
        cover = tr["o200k_in_vocab"] / max(tr["o200k_tokens"], 1)
        print(f"{lang:<5} {docs:>15} {tr['bytes']:>12,} {st['val']['bytes']:>9,} {st['parallel']['bytes']:>9,} "
              f"{tr['tokens']:>13,} {st['val']['tokens']:>9,} {st['parallel']['tokens']:>9,} "
              f"{tr['bytes'] / max(tr['tokens'], 1):>6.2f} {cover:>6.1%}")
        for s in SPLITS:
            for k in tot[s]:
                tot[s][k] += st[s][k]
    docs = "/".join(str(tot[s]["docs"]) for s in SPLITS)
    print(f"{'total':<5} {docs:>15} {tot['train']['bytes']:>12,} {tot['val']['bytes']:>9,} "
          f"{tot['parallel']['bytes']:>9,} {tot['train']['tokens']:>13,} {tot['val']['tokens']:>9,} "
          f"{tot['parallel']['tokens']:>9,} {tot['train']['bytes'] / max(tot['train']['tokens'], 1):>6.2f}")
    v = meta["vocab"]
    print(f"compact vocab {v['vocab_size']} ({meta['n_vocab_used']} used: 256 bytes + EOT + "
          f"{len(v['o200k_ids'])} o200k tokens) covers {meta['coverage']:.1%} of the train split's "
          f"o200k tokens without byte fallback")


# -----------------------------------------------------------------------------

def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Prepare the tokenized multilingual corpus (offline).")
    parser.add_argument("--langs", default="18", help='"18", "128", N, or a comma list like ar,de,fr')
    parser.add_argument("--out", default=None, help="output directory (default: default_cache(), as train.py)")
    parser.add_argument("--vocab_size", type=int, default=8192, help="compact vocabulary size (multiple of 64)")
    parser.add_argument("--data_dir", default=None, help="your corpus instead of the bundled text: DIR/<lang>.jsonl "
                        "(.jsonl.gz, .txt, .parquet) or DIR/<lang>/ shards (CulturaX, MADLAD-400), see corpora/bundled.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--min_tokens", type=int, default=1024, help="grow each val split to at least this many tokens")
    parser.add_argument("--max_tokens_per_lang", type=int, default=0,
                        help="read each language only until this many o200k tokens (0 = all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes tokenizing a --data_dir corpus (default min(CPUs, 8); 1 = this one)")
    a = parser.parse_args(argv)
    out = a.out or default_cache(a.langs, a.vocab_size, a.seed, a.data_dir, a.max_tokens_per_lang)
    why = unwritable(out, "folder")
    if why:
        sys.exit(f"error: --out {out} {why}; give another directory")
    try:
        prepare(a.langs, out, a.vocab_size, a.data_dir, a.seed, a.min_tokens, a.force, a.workers,
                max_tokens_per_lang=a.max_tokens_per_lang)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: nothing half-written is kept; run the same command again")


if __name__ == "__main__":
    from corpora.prepare import main as prepare_main   # by module name: spawned workers import it so
    prepare_main()
