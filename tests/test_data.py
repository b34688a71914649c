"""Tests for corpora/prepare.py and data.py: tokenizer, cache, splits, batches, user corpora prepared (CPU, a few seconds).
How the text is read and cleaned: tests/test_corpus.py."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpora import bundled as corpus  # noqa: E402
import data  # noqa: E402
from corpora.bundled import resolve_langs  # noqa: E402
from corpora import prepare as P  # noqa: E402
from corpora.prepare import prepare  # noqa: E402
from data import Dataset  # noqa: E402
from tokenizer import Tokenizer, o200k_encoding  # noqa: E402

LANGS = ["fr", "ja", "ta"]  # three scripts, small enough to prepare in about a second
VOCAB = 1024


# -----------------------------------------------------------------------------
# fixtures (module scope: build once)

@pytest.fixture(scope="module")
def docs18():
    """A few documents of every bundled 18 language (UDHR articles and catalog text)."""
    out = {}
    for lang in corpus.LANGS_18:
        docs = corpus.bundled_documents(lang)
        out[lang] = [d.text for d in docs[:3]] + [d.text for d in docs if d.tag.startswith("catalog")][:3]
    return out


@pytest.fixture(scope="module")
def tok18(docs18):
    return Tokenizer.train([t for texts in docs18.values() for t in texts], VOCAB)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same small corpus prepared twice into two directories."""
    a = str(tmp_path_factory.mktemp("a"))
    b = str(tmp_path_factory.mktemp("b"))
    return prepare(LANGS, a, vocab_size=VOCAB), prepare(",".join(LANGS), b, vocab_size=VOCAB)


def split_docs(ds, lang, split):
    """Decode a split back into its documents (each ends with EOT)."""
    toks = np.asarray(ds.tokens(lang, split))
    ends = np.nonzero(toks == ds.tokenizer.eot)[0]
    assert len(toks) == 0 or ends[-1] == len(toks) - 1, "every document ends with EOT"
    return [ds.tokenizer.decode(d) for d in np.split(toks, ends + 1)[:-1]]


# -----------------------------------------------------------------------------
# tokenizer

def test_roundtrip_18_languages(docs18, tok18):
    enc = o200k_encoding()
    assert tok18.vocab_size == VOCAB < enc.n_vocab
    for lang, texts in docs18.items():
        for t in texts:
            ids = tok18.encode(t)
            assert tok18.decode(ids) == t, lang
            assert max(ids) < VOCAB and tok18.eot not in ids
            assert len(ids) >= len(enc.encode_ordinary(t))  # byte fallback only adds tokens


def test_roundtrip_unseen_scripts(tok18):
    rng = random.Random(0)
    # random code points from all planes, no surrogates
    rand = "".join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(300))
    texts = ["", " ", "\n\n\t x \r\n",
             "ሰላም ልጆች፣ እንዴት ናችሁ?",             # Amharic (Ethiopic)
             "გამარჯობა, როგორ ხარ?",                # Georgian
             "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",                          # Cherokee
             "👩‍👩‍👧‍👦 🇫🇷 ✊🏿 😀!",                     # emoji, ZWJ sequences, flags, skin tones
             "e\u0301 \u0915\u094d\u200d\u0937 \ufeff",  # combining marks, ZWJ, BOM
             "<|endoftext|> is plain text here",
             rand]
    for t in texts:
        ids = tok18.encode(t)
        assert tok18.decode(ids) == t
        assert sum(tok18.token_bytes()[i] for i in ids) == len(t.encode("utf-8"))


def test_state_dict_roundtrip(tok18, docs18):
    d = json.loads(json.dumps(tok18.state_dict()))
    tok2 = Tokenizer.from_state_dict(d)
    assert tok2.vocab_size == tok18.vocab_size and tok2.eot == tok18.eot == 256
    assert tok2.token_bytes() == tok18.token_bytes()
    tb = tok18.token_bytes()
    assert len(tb) == VOCAB and tb[tok18.eot] == 0 and tb[:256] == [1] * 256
    text = docs18["hi"][0] + docs18["zh"][-1]
    ids = tok18.encode(text)
    assert tok2.encode(text) == ids
    assert tok2.decode(ids) == tok18.decode(ids) == text
    assert tok2.decode(torch.tensor(ids)) == text
    assert tok2.decode([0xE4, 0xBD]) == "\ufffd"  # malformed byte sequence -> replacement char
    with pytest.raises(ValueError):
        tok2.decode([VOCAB])
    with pytest.raises(ValueError):
        Tokenizer.train(["abc"], 1000)  # not a multiple of 64


def test_encode_rejects_lone_surrogates(tok18):
    """A lone surrogate has no UTF-8 bytes: encode refuses it (it used to become U+FFFD silently), so
    "every valid Unicode string round-trips" is exact."""
    for text, pos in (("ab\ud800c", 2), ("\udfff", 0), ("😀 x \udc80", 4)):
        with pytest.raises(ValueError) as e:
            tok18.encode(text)
        msg = str(e.value)
        assert "surrogate" in msg and f"character {pos}" in msg and f"U+{ord(text[pos]):04X}" in msg
    assert tok18.decode(tok18.encode("😀 \U0001F600")) == "😀 😀"  # a surrogate *pair* escape is one character


# -----------------------------------------------------------------------------
# prepared corpus

def test_prepare_deterministic_and_reused(built, capsys):
    a, b = built
    assert a.meta["vocab"] == b.meta["vocab"]
    for lang in LANGS:
        for split in data.SPLITS:
            assert np.array_equal(a.tokens(lang, split), b.tokens(lang, split)), (lang, split)
    mtime = os.path.getmtime(os.path.join(a.out_dir, "fr.train.bin"))
    c = prepare(LANGS, a.out_dir, vocab_size=VOCAB)  # same arguments: reuse, no rebuild
    assert "reusing" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(a.out_dir, "fr.train.bin")) == mtime
    assert c.meta["fingerprint"] == a.meta["fingerprint"]
    assert sorted(os.listdir(a.out_dir)) == sorted([f"{l}.{s}.bin" for l in LANGS for s in data.SPLITS] + ["meta.json"])


def test_splits_disjoint_and_complete(built):
    ds = built[0]
    for lang in LANGS:
        parts = {s: split_docs(ds, lang, s) for s in data.SPLITS}
        st = ds.meta["stats"][lang]
        for s in data.SPLITS:
            assert len(parts[s]) == st[s]["docs"] and len(ds.tokens(lang, s)) == st[s]["tokens"]
            assert sum(len(t.encode()) for t in parts[s]) == st[s]["bytes"]
        assert len(parts["val"]) >= P.MIN_VAL_DOCS
        sets = {s: set(v) for s, v in parts.items()}
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["parallel"])
        assert not (sets["val"] & sets["parallel"])
        # together the splits are exactly the language's documents
        assert sorted(sum(parts.values(), [])) == sorted(d.text for d in corpus.bundled_documents(lang))


def test_parallel_split_is_the_same_articles(built):
    ds = built[0]
    for lang in LANGS:
        assert ds.meta["sources"][lang]["parallel_articles"] == list(corpus.PARALLEL_ARTICLES)
        arts = dict(corpus.udhr_articles(lang))
        assert split_docs(ds, lang, "parallel") == [arts[n] for n in corpus.PARALLEL_ARTICLES]


def test_load_without_tiktoken(built, monkeypatch):
    ds0 = built[0]
    for mod in ("tiktoken", "django", "kolibri", "third_party"):
        monkeypatch.setitem(sys.modules, mod, None)  # any import of these now fails
    ds = Dataset.load(ds0.out_dir)
    assert isinstance(ds.tokens("fr", "train"), np.memmap)
    assert split_docs(ds, "ja", "parallel") == split_docs(ds0, "ja", "parallel")


def test_prepared_cache_without_the_text_packages(built, no_text_packages, capsys):
    """A GPU node that got only data_cache/ (kolibri alone is 350 MB): the cache's languages are the
    available ones, prepare() reuses it for the same settings, anything else is a one-line error."""
    ds0 = built[0]
    assert not corpus.bundled_installed()
    with pytest.raises(ValueError, match="bundled-text packages .* not installed"):
        resolve_langs("18")
    assert resolve_langs("18", cache=ds0.out_dir) == ["fr", "ja", "ta"]  # the cache's, in the 18 order
    assert "left out" in capsys.readouterr().out
    ds = prepare(LANGS, ds0.out_dir, vocab_size=VOCAB)
    assert "not installed here" in capsys.readouterr().out
    assert np.array_equal(ds.tokens("ta", "val"), ds0.tokens("ta", "val"))
    with pytest.raises(ValueError, match="no text for language code"):
        prepare(["fr", "de"], ds0.out_dir, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="not installed here to build it"):
        prepare(LANGS, ds0.out_dir, vocab_size=2 * VOCAB)
    assert os.path.isfile(os.path.join(ds0.out_dir, "meta.json"))  # nothing was deleted


# -----------------------------------------------------------------------------
# batches

def test_get_batch(built):
    ds = built[0]
    g = torch.Generator().manual_seed(0)
    x, y = ds.get_batch("train", "ja", 4, 32, g, "cpu")
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < VOCAB
    x2, _ = ds.get_batch("train", "ja", 4, 32, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)  # same generator seed, same batch
    toks = np.asarray(ds.tokens("ja", "train"))
    row = x[0].numpy()
    starts = np.nonzero(toks[:len(toks) - 32] == row[0])[0]
    assert any(np.array_equal(toks[s:s + 32], row) for s in starts)  # a real window of ja


def test_mixed_batch_and_probs(built):
    ds = built[0]
    p = ds.sampling_probs(0.3)
    assert list(p) == LANGS and abs(sum(p.values()) - 1) < 1e-9
    n = {lang: ds.n_tokens(lang, "train") for lang in LANGS}
    big, small = max(n, key=n.get), min(n, key=n.get)
    assert p[big] > p[small] and p[big] / p[small] < n[big] / n[small]  # flattened by alpha < 1
    g = torch.Generator().manual_seed(1)
    x, y, li = ds.mixed_batch("train", 16, 24, None, g, "cpu")
    assert x.shape == y.shape == (16, 24) and li.shape == (16,) and li.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(li.min()) >= 0 and int(li.max()) < len(LANGS)
    _, _, li = ds.mixed_batch("val", 8, 24, {"ta": 1.0}, g)
    assert (li == LANGS.index("ta")).all()
    with pytest.raises(ValueError):
        ds.mixed_batch("train", 2, 8, {"xx": 1.0}, g)


def test_eval_windows(built):
    ds = built[0]
    toks = np.asarray(ds.tokens("fr", "val"))
    T = 64
    x, y = ds.eval_windows("fr", "val", T, max_windows=1000)
    n = len(toks) // (T + 1)
    assert x.shape == y.shape == (n, T) and x.dtype == torch.int64
    for i in range(n):
        assert np.array_equal(x[i].numpy(), toks[i * (T + 1):i * (T + 1) + T])
        assert np.array_equal(y[i].numpy(), toks[i * (T + 1) + 1:(i + 1) * (T + 1)])
    x3, y3 = ds.eval_windows("fr", "val", T, max_windows=3)
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])


def test_block_longer_than_split(built):
    ds = built[0]
    n = len(ds.tokens("ja", "parallel"))
    for call in (lambda: ds.get_batch("parallel", "ja", 2, n, None), lambda: ds.eval_windows("ja", "parallel", n, 4)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "ja/parallel" in msg and str(n) in msg and str(n + 1) in msg and "\n" not in msg
    x, _ = ds.eval_windows("ja", "parallel", n - 1, 4)  # exactly one window fits
    assert x.shape == (1, n - 1)


# -----------------------------------------------------------------------------
# user corpora (data_dir)

def test_user_corpora(tmp_path):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    jdocs = [" ".join(rng.choices(words, k=40)) + f" #{i}" for i in range(40)]
    tdocs = ["Ligne un du doc %d.\nLigne deux: %s" % (i, " ".join(rng.choices(words, k=30))) for i in range(30)]
    d = tmp_path / "corpus"
    d.mkdir()
    with open(d / "aa.jsonl", "w", encoding="utf-8") as f:
        for t in jdocs:
            f.write(json.dumps({"text": t, "url": "x"}) + "\n")
        f.write("\n")  # blank lines are ignored
    (d / "bb.txt").write_text("\n\n".join(tdocs) + "\n\n\n", encoding="utf-8")
    assert corpus.available_langs(str(d)) == ["aa", "bb"]
    with pytest.raises(ValueError, match="none of the 18 languages has text"):
        resolve_langs("18", str(d))
    with pytest.raises(ValueError) as e:
        resolve_langs("aa,fr", str(d))
    assert "fr" in str(e.value) and "aa bb" in str(e.value)
    ds = prepare("aa,bb", str(tmp_path / "out"), vocab_size=320, data_dir=str(d), min_tokens=0)
    for lang, docs in (("aa", jdocs), ("bb", tdocs)):
        got = split_docs(ds, lang, "train") + split_docs(ds, lang, "val")
        assert sorted(got) == sorted(docs)
        assert len(split_docs(ds, lang, "val")) >= P.MIN_VAL_DOCS
        assert len(ds.tokens(lang, "parallel")) == 0
        assert not set(split_docs(ds, lang, "train")) & set(split_docs(ds, lang, "val"))
    with pytest.raises(ValueError):
        ds.eval_windows("aa", "parallel", 8, 1)


def _write_corpus(d, n_bytes):
    """aa.jsonl, bb.txt and cc.jsonl.gz of about n_bytes each, in three scripts."""
    import gzip
    rng = random.Random(0)
    words = {"aa": "alpha beta gamma delta epsilon zeta éta thêta iota kappa lambda".split(),
             "bb": "東京 大阪 です ます 日本語 文字 テスト 人間 権利 自由".split(),
             "cc": "தமிழ் மொழி உரிமை மனித சுதந்திரம் அனைவரும் பிறப்பு".split()}
    docs = {}
    for lang, w in words.items():
        docs[lang], n = [], 0
        while n < n_bytes:
            docs[lang].append(" ".join(rng.choices(w, k=rng.randrange(5, 300))) + f" {len(docs[lang])}")
            n += len(docs[lang][-1].encode("utf-8"))
    with open(d / "aa.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "url": "x"}, ensure_ascii=False) + "\n" for t in docs["aa"])
    (d / "bb.txt").write_text("\n\n".join(docs["bb"]) + "\n", encoding="utf-8")
    with gzip.open(d / "cc.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs["cc"])
    return docs


def test_parallel_prepare_is_identical(tmp_path, monkeypatch, capsys):
    """workers=2 (spawned processes, files cut into many byte ranges) writes exactly what workers=1 does."""
    d = tmp_path / "corpus"
    d.mkdir()
    docs = _write_corpus(d, 600_000)
    monkeypatch.setattr(P, "CHUNK_BYTES", 64 << 10)  # ~10 ranges per plain file (the .gz is one)
    assert len(P._units(["aa", "bb", "cc"], str(d))) > 15
    one = prepare("aa,bb,cc", str(tmp_path / "w1"), vocab_size=512, data_dir=str(d), workers=1)
    two = prepare("aa,bb,cc", str(tmp_path / "w2"), vocab_size=512, data_dir=str(d), workers=2)
    assert "with 2 worker processes" in capsys.readouterr().out
    for lang in docs:
        for split in data.SPLITS:
            name = f"{lang}.{split}.bin"
            assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
        train = split_docs(two, lang, "train")
        assert sorted(train + split_docs(two, lang, "val")) == sorted(docs[lang])
        assert train == [t for t in docs[lang] if t in set(train)]  # in file order
    m1, m2 = dict(one.meta), dict(two.meta)
    assert m1.pop("prepare_seconds") >= 0 and m2.pop("prepare_seconds") >= 0
    assert m1 == m2
    bins = sorted(f"{lang}.{split}.bin" for lang in docs for split in data.SPLITS)
    assert sorted(os.listdir(tmp_path / "w2")) == bins + ["meta.json"]  # no scratch left


def test_parallel_prepare_error(tmp_path, monkeypatch):
    """A bad line in one range of a file fails the whole prepare with its line number; nothing is left."""
    d = tmp_path / "corpus"
    d.mkdir()
    lines = [json.dumps({"text": f"document {i} " + "word " * 50}) for i in range(400)]
    lines[300] = "{broken"
    (d / "aa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "bb.jsonl").write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    monkeypatch.setattr(P, "CHUNK_BYTES", 8 << 10)
    with pytest.raises(ValueError, match=r"aa\.jsonl:301: not valid JSON"):
        prepare("aa,bb", str(tmp_path / "out"), vocab_size=320, data_dir=str(d), workers=2)
    assert os.listdir(tmp_path / "out") == []


def test_prepare_with_a_given_vocabulary(tmp_path):
    """New-language adaptation tokenizes new text with the model's existing vocabulary."""
    base = prepare(["de", "nl"], str(tmp_path / "a"), vocab_size=512)
    other = prepare(["ru"], str(tmp_path / "b"), tokenizer=base.tokenizer)
    assert other.tokenizer.state_dict() == base.tokenizer.state_dict()
    ids = other.tokens("ru", "val")[:200].tolist()
    assert max(ids) < 512
    assert "Статья" in base.tokenizer.decode(other.tokens("ru", "parallel").tolist())  # UDHR articles, in Russian
    # a different given vocabulary is a different cache (never reused by mistake)
    third = prepare(["ru"], str(tmp_path / "b"), tokenizer=prepare(["de"], str(tmp_path / "c"), vocab_size=512).tokenizer)
    assert third.meta["fingerprint"] != other.meta["fingerprint"]


def test_one_document_language(tmp_path):
    """Splits are by document: a language that is one long document gets an empty val split, and the
    error says so (more text in the same document would not help)."""
    d = tmp_path / "corpus"
    d.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    (d / "aa.jsonl").write_text(json.dumps({"text": " ".join(words * 300)}) + "\n", encoding="utf-8")
    (d / "bb.jsonl").write_text("".join(json.dumps({"text": f"{w} doc {i}"}) + "\n" for i, w in enumerate(words)))
    ds = prepare("aa,bb", str(tmp_path / "out"), vocab_size=320, data_dir=str(d))
    assert ds.meta["stats"]["aa"]["train"]["docs"] == 1 and len(ds.tokens("aa", "train")) > 1000
    with pytest.raises(ValueError) as e:
        ds.eval_windows("aa", "val", 64, 1)
    msg = str(e.value)
    assert "aa/val has 0 tokens" in msg and "aa has 1 document " in msg and "split its text" in msg
    assert "\n" not in msg


def test_default_cache():
    """train.py's cache name (the same as before for the arguments it had), and the cap's suffix."""
    assert data.default_cache("18", 8192) == os.path.join("data_cache", "18-v8192")
    assert data.default_cache("ar,de", 512, 2, "/x/CulturaX/") == os.path.join("data_cache", "ar_de-v512-split2-CulturaX")
    assert data.default_cache("ar,de", 512, 0, "", 10 ** 8) == os.path.join("data_cache", "ar_de-v512-max100000000")


def test_a_killed_prepare_leaves_no_scratch_behind(tmp_path):
    """scratch.<pid> of a process that is gone (a prepare killed with SIGKILL) is removed by the next prepare;
    a live process's is kept."""
    import subprocess
    gone = subprocess.Popen(["true"]); gone.wait()
    out = tmp_path / "cache"
    (out / f"scratch.{gone.pid}").mkdir(parents=True)
    (out / f"scratch.{gone.pid}" / "shard.0").write_bytes(b"x" * 100)
    (out / f"scratch.{os.getpid()}").mkdir()
    P.remove_stale_scratch(str(out))
    assert not (out / f"scratch.{gone.pid}").exists() and (out / f"scratch.{os.getpid()}").exists()
