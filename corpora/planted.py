"""
The planted world: a synthetic multilingual corpus in which the right groups are known.

    python corpora/planted.py --out data_cache/planted-0      # what train.py --preset planted reads

What it assumes, and so what the method should find in it:
- Every language uses the same N_WORDS words (each one o200k token: the most frequent lowercase words).
- A *family* is a first-order Markov chain: after each word comes one of SUCCESSORS words that the
  family drew at random, with fixed probabilities. Two families almost never agree on what follows a
  word, so a dense model that serves them all has to keep their tables apart in the same weights:
  interference, by construction. The tables are large for the preset's model (512 rows against an FFN
  of 128 hidden units at d = 32): one family's table is about what one FFN can hold, so the capacity an
  expert adds is what the families compete for, and an expert shared by three families holds less of
  each than an expert of one family.
- Every sentence of a language starts with its own MARKER word, as a script or a spelling marks a real
  language: the context says which language it is, but not which family; only the tables say that.
- A *language* is its family's chain with a share DRIFT of the rows redrawn for that language alone:
  languages of a family are close, but none is a copy of another.
- The languages' names (l0 .. l11) are shuffled over the families, so that nothing but the text says
  which language belongs where. families.json records the truth; eval.report puts it in results.json as `true_groups`.
Everything is drawn from numpy generators seeded with `seed`: the same seed writes the same bytes.
Why these constants, and the worlds that did not work: docs/EXPERIMENTS.md §4. After changing a constant,
delete data_cache/*planted-<seed>: train.py refuses a cache whose text changed rather than rebuild it.
"""
import functools
import json
import os
import sys

import numpy as np

N_WORDS = 512                   # the shared word list
FAMILIES, PER_FAMILY = 4, 3     # 12 languages in 4 families
SUCCESSORS = (0.7, 0.1, 0.1, 0.1)  # the probabilities of a row's successors
MARKERS = "red blue green black white brown gold silver pink gray stone river".split()  # a language's mark
SENTENCE = 8                    # words per sentence; each sentence starts with its language's marker
DRIFT = 0.05                    # share of a family's rows that each of its languages redraws
DOCS, DOC_WORDS = 400, 100      # documents per language and words per document (~50k tokens a language)


@functools.lru_cache(maxsize=None)
def words(n=N_WORDS):
    """The n lowest-ranked (most frequent) o200k tokens that are a space and 3+ lowercase ASCII letters,
    markers excepted: each is one token whatever the text around it."""
    from tokenizer import o200k_ranks
    out = []
    for token in o200k_ranks():
        w = token[1:].decode("ascii", "replace")
        if token[:1] == b" " and len(w) >= 3 and w.isascii() and w.isalpha() and w.islower() and w not in MARKERS:
            out.append(w)
            if len(out) == n:
                return tuple(out)
    raise ValueError(f"o200k has fewer than {n} such words")


def world(seed=0):
    """{lang: (V, V) transition matrix} and the true families [[lang, ...], ...]."""
    assert FAMILIES * PER_FAMILY <= len(MARKERS), "one MARKER per language"
    rng = np.random.default_rng(seed)
    V = N_WORDS

    def rows(n):   # n random rows: each word's successors drawn without repetition
        table = np.zeros((n, V))
        for r in range(n):
            table[r, rng.choice(V, len(SUCCESSORS), replace=False)] = SUCCESSORS
        return table

    # the names' shuffle has a generator of its own: group.random_groups(langs, sizes, seed) permutes the
    # languages with default_rng(seed), and from the same generator it would draw the planted families
    # themselves as the "random" groups (as it did before 2026-12-06)
    names = [f"l{i}" for i in np.random.default_rng([seed, 2]).permutation(FAMILIES * PER_FAMILY)]
    chains, families = {}, []
    for f in range(FAMILIES):
        family = rows(V)
        members = names[f * PER_FAMILY:(f + 1) * PER_FAMILY]
        for lang in members:
            own = family.copy()
            redrawn = rng.choice(V, round(DRIFT * V), replace=False)
            own[redrawn] = rows(len(redrawn))
            chains[lang] = own
        families.append(sorted(members, key=lambda l: int(l[1:])))
    return dict(sorted(chains.items(), key=lambda kv: int(kv[0][1:]))), sorted(families)


def documents(chain, marker, rng):
    """DOCS documents of DOC_WORDS words walked along `chain` (all documents a step at a time), cut into
    sentences of SENTENCE words that each start with ". <marker>"."""
    cum = chain.cumsum(axis=1)                                   # (V, V) for inverse-CDF sampling
    w = rng.integers(len(chain), size=DOCS)                      # (DOCS,) the first words
    walk = [w]
    for _ in range(DOC_WORDS - 1):
        u = rng.random(DOCS)[:, None]                            # (DOCS, 1)
        w = np.minimum((u > cum[w]).sum(axis=1), len(chain) - 1)  # the next word of every document
        walk.append(w)
    for doc in np.stack(walk, axis=1):                           # (DOCS, DOC_WORDS)
        text = [words()[i] for i in doc]
        yield "".join(f". {marker} " + " ".join(text[i:i + SENTENCE]) for i in range(0, len(text), SENTENCE))


def write(out_dir, seed=0):
    """out_dir/<lang>.jsonl (a --data_dir corpus) and out_dir/families.json. Files whose bytes would not
    change are left untouched, so that a data cache built from them stays valid. Returns out_dir."""
    chains, families = world(seed)
    rng = np.random.default_rng([seed, 1])
    files = {f"{lang}.jsonl": "".join(json.dumps({"text": d}) + "\n"
                                      for d in documents(chain, MARKERS[int(lang[1:])], rng))
             for lang, chain in chains.items()}
    files["families.json"] = json.dumps({"true_groups": families, "seed": seed}) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        if os.path.exists(path) and open(path, encoding="utf-8").read() == text:
            continue
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return out_dir


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Write the planted world as a --data_dir corpus.")
    p.add_argument("--out", default=None, help="default: data_cache/planted-SEED, where train.py --preset planted looks")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.out = a.out or f"data_cache/planted-{a.seed}"
    print(f"wrote {write(a.out, a.seed)}: families {world(a.seed)[1]}")
    sys.exit(0)
