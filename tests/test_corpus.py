"""Tests for corpora/bundled.py: languages, bundled-text cleaning, and user corpora as downloaded (single files,
CulturaX parquet shards, MADLAD-400 .jsonl.gz shards), read and prepared (CPU, a few seconds)."""
import gzip
import json
import os
import random
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpora import bundled as corpus  # noqa: E402
import data  # noqa: E402
from corpora import prepare as P  # noqa: E402
import tokenizer  # noqa: E402
from corpora.bundled import resolve_langs  # noqa: E402
from corpora.prepare import prepare  # noqa: E402


# -----------------------------------------------------------------------------
# languages

def test_resolve_langs(capsys):
    assert resolve_langs("18") == corpus.LANGS_18
    assert resolve_langs("ar, de,fr") == ["ar", "de", "fr"]
    assert resolve_langs(["ar", "de"]) == ["ar", "de"]
    assert capsys.readouterr().out == ""  # nothing left out, nothing to say
    assert resolve_langs("3") == ["am", "ar", "az"]  # first 3 of the 128 list with text
    assert capsys.readouterr().out.count("\n") == 1  # ... and a note that av was passed over
    assert len(corpus.LANGS_128) == 128 and corpus.LANGS_128[:3] == ["am", "ar", "av"]
    for bad, name in [("ar,xx,de", "xx"), ("av", "av"), (["fr", "ce"], "ce")]:  # an explicit list must have text
        with pytest.raises(ValueError) as e:
            resolve_langs(bad)
        msg = str(e.value)
        assert name in msg and "available" in msg and "\n" not in msg and "fr" in msg
    with pytest.raises(ValueError):
        resolve_langs("500")


def test_resolve_128_leaves_out_languages_without_text(capsys):
    """--langs 128 on the bundled corpus: the languages that have text, in paper order, and one line
    naming the rest."""
    missing = [c for c in corpus.LANGS_128 if not corpus.has_bundled_text(c)]
    assert set(missing) >= {"av", "ce", "grc", "gsw", "kaa", "sd"}
    langs = resolve_langs("128")
    assert langs == [c for c in corpus.LANGS_128 if c not in missing] and len(langs) == 128 - len(missing)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("note:") and f"{len(missing)} of the 128" in out
    assert out.split(": ")[-1].split(" (")[0].split() == missing and "--data_dir" in out
    assert resolve_langs(langs) == langs and capsys.readouterr().out == ""  # an explicit list: no note


def test_every_18_language_has_text():
    for lang in corpus.LANGS_18:
        assert corpus.udhr_file(lang) is not None, lang
        arts = dict(corpus.udhr_articles(lang))
        assert set(range(1, 31)) <= set(arts), lang
    assert os.path.basename(corpus.udhr_file("zh")) == "udhr_cmn_hans.xml"
    assert os.path.basename(corpus.udhr_file("ar")) == "udhr_arb.xml"


# -----------------------------------------------------------------------------
# catalog cleaning

def test_parse_po(tmp_path):
    po = tmp_path / "django.po"
    po.write_text(r'''# header comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

msgid "Hello"
msgstr "Bonjour"

#, fuzzy
msgid "Guess"
msgstr "Devine"

msgid "Untranslated"
msgstr ""

msgctxt "ctx"
msgid ""
"Long "
"source"
msgstr ""
"Une longue "
"phrase \"citée\"\n"

msgid "%(n)s item"
msgid_plural "%(n)s items"
msgstr[0] "%(n)s objet"
msgstr[1] "%(n)s objets"

#~ msgid "Old"
#~ msgstr "Vieux"
''', encoding="utf-8")
    pairs = corpus.parse_po(str(po))
    assert pairs == [("Hello", "Bonjour"), ("Long source", 'Une longue phrase "citée"\n'),
                     ("%(n)s item", "%(n)s objet"), ("%(n)s items", "%(n)s objets")]


def test_clean_message():
    c = corpus.clean_message
    assert c("{count, plural, one {# item} other {# items}} left") == ["item left", "items left"]
    assert c("%(name)s a modifié « %(obj)s » le %d/%s.") == ["a modifié le /."]
    assert c("Sera copié sur '{classroomName}' ({ n })") == ["Sera copié sur"]
    assert c("<b>Bonjour</b>&nbsp;&amp;   salut\n") == ["Bonjour & salut"]
    assert c("100 %% sûr") == ["100 % sûr"]
    assert c("{0} %s 42") == []  # no letters left
    assert c("{n, select, male {il} female {elle} other {iel}} part") == ["il part", "elle part", "iel part"]


def test_catalog_strings_are_clean():
    strings = corpus.catalog_strings("fr")
    assert len(strings) > 1000 and len(set(strings)) == len(strings)
    for s in strings:
        assert "%(" not in s and "{" not in s and "}" not in s and "<" not in s and s == s.strip()
        assert "\n" not in s and any(ch.isalpha() for ch in s)


# -----------------------------------------------------------------------------
# user corpora: files, lines, byte ranges

def test_bad_jsonl(tmp_path):
    p = tmp_path / "xx.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(ValueError) as e:
        list(corpus.read_user_documents(str(p)))
    assert f"{p}:3:" in str(e.value) and "\n" not in str(e.value)
    p.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        list(corpus.read_user_documents(str(p)))
    p.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":3:"):
        prepare("xx", str(tmp_path / "out"), vocab_size=320, data_dir=str(tmp_path))
    assert os.listdir(tmp_path / "out") == []  # scratch files cleaned up, no meta.json


def test_byte_ranges(tmp_path):
    """Reading a user file range by range gives exactly its documents, whatever the cut size."""
    rng = random.Random(0)
    words = ["мир", "paz", "平和", "amani"]
    docs = [" ".join(rng.choices(words, k=rng.randrange(1, 30))) + f" {i}" for i in range(200)]
    (tmp_path / "aa.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" * rng.randrange(1, 3)
                                               for t in docs), encoding="utf-8")
    (tmp_path / "bb.txt").write_text("\n\n" + "\n\n\n".join(t.replace(" 1", "\n1") for t in docs), encoding="utf-8")
    for path in (str(tmp_path / "aa.jsonl"), str(tmp_path / "bb.txt")):
        whole = [d.text for d in corpus.read_user_documents(path)]
        assert len(whole) == len(docs)
        for chunk_bytes in (1, 7, 100, 1000, 1 << 20):
            ranges = corpus.byte_ranges(path, chunk_bytes)
            assert ranges[0][0] == 0 and ranges[-1][1] == os.path.getsize(path)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert [d.text for r in ranges for d in corpus.read_user_documents(path, *r)] == whole
    # an error in a later range still names the line of the file
    p = tmp_path / "cc.jsonl"
    p.write_text('{"text": "a"}\n' * 50 + "not json\n" + '{"text": "b"}\n' * 50, encoding="utf-8")
    start, end = [r for r in corpus.byte_ranges(str(p), 100) if r[0] <= 14 * 50 < r[1]][0]  # line 51 at byte 700
    assert start > 0
    with pytest.raises(ValueError, match=re.escape(f"{p}:51: not valid JSON")):
        list(corpus.read_user_documents(str(p), start, end))



# -----------------------------------------------------------------------------
# user corpora as downloaded: CulturaX (parquet shards), MADLAD-400 (.jsonl.gz shards), mixed folders

def make_docs(n, seed=0, tag=""):
    rng = random.Random(seed)
    words = "alpha beta gamma delta éta thêta мир paz 平和 amani தமிழ் 東京".split()
    return [" ".join(rng.choices(words, k=rng.randrange(5, 80))) + f" {tag}{i}" for i in range(n)]


def write_jsonl(path, texts):
    lines = "".join(json.dumps({"text": t, "url": "x"}, ensure_ascii=False) + "\n" for t in texts)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")


def write_parquet(path, texts, column="text"):
    """A CulturaX shard: columns text, timestamp, url, source; small row groups (several batches)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    n = len(texts)
    table = pa.table({column: pa.array(texts, pa.string()), "timestamp": pa.array(["2021-01-01"] * n, pa.string()),
                      "url": pa.array(["x"] * n, pa.string()), "source": pa.array(["mC4"] * n, pa.string())})
    pq.write_table(table, path, row_group_size=7)


def shards(texts, k):
    """texts cut into k consecutive parts."""
    return [texts[i * len(texts) // k:(i + 1) * len(texts) // k] for i in range(k)]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same two languages as single files, CulturaX shards and MADLAD-400 shards: (docs, dirs)."""
    pytest.importorskip("pyarrow")
    root = tmp_path_factory.mktemp("layouts")
    docs = {"aa": make_docs(90, 1, "a"), "bb": make_docs(70, 2, "b")}
    dirs = {name: root / name for name in ("single", "culturax", "madlad")}
    for d in dirs.values():
        d.mkdir()
    for lang, texts in docs.items():
        write_jsonl(dirs["single"] / f"{lang}.jsonl", texts)
        (dirs["culturax"] / lang).mkdir()
        (dirs["madlad"] / lang).mkdir()
        for i, part in enumerate(shards(texts, 3)):
            write_parquet(dirs["culturax"] / lang / f"{lang}_part_{i:05d}.parquet", part)
            write_jsonl(dirs["madlad"] / lang / f"{lang}_clean_{i:04d}.jsonl.gz", part)
    (dirs["culturax"] / ".cache").mkdir()  # what `huggingface-cli download --local-dir` leaves: not a language
    (dirs["culturax"] / ".cache" / "x.jsonl").write_text('{"text": "no"}\n')
    return docs, {name: str(d) for name, d in dirs.items()}


def read_all(data_dir, lang):
    return [d.text for path in corpus.language_files(data_dir, lang) for d in corpus.read_user_documents(path)]


def test_layouts_read_in_order(layouts, tmp_path, monkeypatch):
    """Every layout gives the same documents in the same order; a folder's shards are read by name."""
    docs, dirs = layouts
    monkeypatch.setattr(corpus, "PARQUET_BATCH_ROWS", 5)  # several batches per row group and file
    for d in dirs.values():
        assert corpus.available_langs(d) == ["aa", "bb"]
        for lang in docs:
            assert read_all(d, lang) == docs[lang], (d, lang)
    assert [os.path.basename(p) for p in corpus.language_files(dirs["culturax"], "aa")] == \
        [f"aa_part_0000{i}.parquet" for i in range(3)]
    # a folder may mix all four kinds; sorted by name (00002 before 00010), other files ignored
    texts = make_docs(50, 3)
    mixed = tmp_path / "mixed" / "cc"
    mixed.mkdir(parents=True)
    write_parquet(mixed / "cc_00010.parquet", texts[30:40])
    write_jsonl(mixed / "cc_00002.jsonl.gz", texts[:10])
    (mixed / "cc_00003.txt").write_text("\n\n".join(texts[10:20]) + "\n", encoding="utf-8")
    write_jsonl(mixed / "cc_00004.jsonl", texts[20:30])
    write_jsonl(mixed / "cc_00011.jsonl", texts[40:])
    (mixed / "README.md").write_text("not text")
    (mixed / ".cc_00001.jsonl").write_text("hidden")
    assert read_all(str(tmp_path / "mixed"), "cc") == texts


def test_layouts_prepare_the_same_bins(layouts, tmp_path):
    """CulturaX and MADLAD-400 shards prepare exactly the bins of the same text as DIR/<lang>.jsonl."""
    docs, dirs = layouts
    out = {name: prepare("aa,bb", str(tmp_path / name), vocab_size=320, data_dir=d, min_tokens=0, workers=1)
           for name, d in dirs.items()}
    for name in ("culturax", "madlad"):
        assert out[name].meta["vocab"] == out["single"].meta["vocab"]
        for lang in docs:
            assert len(out[name].meta["sources"][lang]["files"]) == 3
            for split in data.SPLITS:
                bin_name = f"{lang}.{split}.bin"
                assert (tmp_path / name / bin_name).read_bytes() == (tmp_path / "single" / bin_name).read_bytes()
    assert out["single"].meta["stats"]["aa"]["train"]["docs"] + out["single"].meta["stats"]["aa"]["val"]["docs"] == 90


def test_max_tokens_per_lang(tmp_path, monkeypatch):
    """The cap keeps each language's first documents (whole) until it holds max_tokens o200k tokens,
    the same with 1 or 2 worker processes, and is part of the cache fingerprint."""
    d = tmp_path / "corpus"
    (d / "aa").mkdir(parents=True)
    docs = {"aa": make_docs(400, 4, "a"), "bb": make_docs(300, 5, "b")}
    for i, part in enumerate(shards(docs["aa"], 8)):
        write_jsonl(d / "aa" / (f"aa_clean_{i:04d}.jsonl" + ".gz" * (i % 2)), part)  # .jsonl and .jsonl.gz
    (d / "aa" / "aa_clean_0001b.jsonl").write_text("{broken\n")  # read after 0001.jsonl.gz, if read at all
    write_jsonl(d / "bb.jsonl", docs["bb"])
    monkeypatch.setattr(P, "CHUNK_BYTES", 4 << 10)  # bb.jsonl and the plain aa shards in many ranges
    enc = tokenizer.o200k_encoding()
    cap = 4000
    expect = {}
    for lang, texts in docs.items():
        n_tok = np.array([len(enc.encode_ordinary(t)) for t in texts])
        starts = np.cumsum(n_tok) - n_tok
        expect[lang] = texts[:int((starts < cap).sum())]
        assert 1 < len(expect[lang]) < len(texts) // 4  # the cap cuts early, in the middle of a file
    assert 50 < len(expect["aa"]) < 100  # ... of aa's second shard: the broken one after it is never used,
    # though 2 workers start it before the cap is reached (1 worker never does)
    one = prepare("aa,bb", str(tmp_path / "w1"), vocab_size=320, data_dir=str(d), workers=1, max_tokens_per_lang=cap)
    two = prepare("aa,bb", str(tmp_path / "w2"), vocab_size=320, data_dir=str(d), workers=2, max_tokens_per_lang=cap)
    for lang in docs:
        st = one.meta["stats"][lang]
        assert st["train"]["docs"] + st["val"]["docs"] == len(expect[lang])
        assert cap <= st["train"]["o200k_tokens"] + st["val"]["o200k_tokens"] < cap + 200
        for split in data.SPLITS:
            name = f"{lang}.{split}.bin"
            assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
        got = [one.tokenizer.decode(t) for s in ("train", "val") for t in
               np.split(np.asarray(one.tokens(lang, s)), np.nonzero(np.asarray(one.tokens(lang, s)) == 256)[0] + 1)[:-1]]
        assert sorted(got) == sorted(expect[lang])
    assert one.meta["fingerprint"] == two.meta["fingerprint"] and one.meta["args"]["max_tokens_per_lang"] == cap
    with pytest.raises(ValueError, match=r"aa_clean_0001b\.jsonl:1: not valid JSON"):  # no cap: all is read
        prepare("aa,bb", str(tmp_path / "w1"), vocab_size=320, data_dir=str(d), workers=1)
    (d / "aa" / "aa_clean_0001b.jsonl").unlink()
    full = prepare("aa,bb", str(tmp_path / "w1"), vocab_size=320, data_dir=str(d), workers=1)  # rebuilt
    assert full.meta["fingerprint"] != one.meta["fingerprint"]
    assert full.meta["stats"]["bb"]["train"]["docs"] + full.meta["stats"]["bb"]["val"]["docs"] == 300
    with pytest.raises(ValueError, match="max_tokens_per_lang"):
        prepare("aa", str(tmp_path / "w3"), vocab_size=320, data_dir=str(d), max_tokens_per_lang=-1)


def _truncated_gz(path):
    write_jsonl(path, make_docs(300, 6))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def _truncated_parquet(path):
    write_parquet(path, make_docs(50, 7))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


BAD_SHARDS = {  # file name -> how to spoil it, and a word of the expected message
    "ar_clean_0001.jsonl.gz": (_truncated_gz, "truncated"),
    "ar_clean_0002.jsonl.gz": (lambda p: p.write_bytes(b"<html>not found</html>\n"), "gzip"),
    "ar_part_00001.parquet": (lambda p: write_parquet(p, ["x"], column="content"), '"text"'),
    "ar_part_00002.parquet": (_truncated_parquet, "parquet"),
    "ar_part_00003.parquet": (lambda p: p.write_bytes(b""), "empty file"),
    "ar_clean_0003.jsonl.gz": (lambda p: p.write_bytes(b""), "empty file"),
    "ar_part_00004.parquet": (lambda p: write_parquet(p, []), "no documents"),
    "ar_clean_0004.jsonl": (lambda p: p.write_text('\n{"text": "  "}\n\n'), "no documents"),
}


@pytest.mark.parametrize("name", sorted(BAD_SHARDS))
def test_bad_shard_names_the_file(tmp_path, name):
    """A bad shard among good ones: one line that names it; nothing left behind."""
    pytest.importorskip("pyarrow")
    spoil, word = BAD_SHARDS[name]
    (tmp_path / "corpus" / "ar").mkdir(parents=True)
    write_jsonl(tmp_path / "corpus" / "ar" / "ar_clean_0000.jsonl", make_docs(20, 8))
    bad = tmp_path / "corpus" / "ar" / name
    spoil(bad)
    with pytest.raises(ValueError) as e:
        prepare("ar", str(tmp_path / "out"), vocab_size=320, data_dir=str(tmp_path / "corpus"))
    msg = str(e.value)
    assert str(bad) in msg and word in msg and "\n" not in msg, msg
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["ar.jsonl", "ar.txt", "ar.jsonl.gz"])
def test_empty_single_file(tmp_path, name):
    """A 0-byte DIR/ar.jsonl was `KeyError: 'ar'`: now one line naming the file."""
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "de.jsonl", make_docs(20, 9))
    (tmp_path / "corpus" / name).write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "corpus" / name)) + ".*empty"):
        prepare("ar,de", str(tmp_path / "out"), vocab_size=320, data_dir=str(tmp_path / "corpus"))


def test_text_in_two_places(tmp_path):
    (tmp_path / "ar").mkdir()
    write_jsonl(tmp_path / "ar" / "ar_clean_0000.jsonl.gz", ["a"])
    write_jsonl(tmp_path / "ar.jsonl", ["b"])
    assert corpus.available_langs(str(tmp_path)) == ["ar"]
    with pytest.raises(ValueError, match="ar has text in .*ar.jsonl and in .*ar/: keep one"):
        corpus.language_files(str(tmp_path), "ar")


def test_lone_surrogate_names_file_and_line(tmp_path):
    """json.loads accepts an escaped lone surrogate, which no UTF-8 (nor tokenizer) can hold: the error
    names the file and line (it used to be a bare UnicodeEncodeError from deep inside prepare)."""
    p = tmp_path / "xx.jsonl"
    p.write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n', encoding="utf-8")
    with pytest.raises(ValueError) as e:
        list(corpus.read_user_documents(str(p)))
    assert f"{p}:2:" in str(e.value) and "surrogate" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=re.escape(f"{p}:2:")):
        prepare("xx", str(tmp_path / "out"), vocab_size=320, data_dir=str(tmp_path))


def test_parquet_without_pyarrow(layouts, tmp_path, monkeypatch):
    """Without pyarrow a parquet corpus is one line saying what to install, before any tokenizing;
    the .jsonl / .jsonl.gz layouts do not need it."""
    docs, dirs = layouts
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # any import of pyarrow now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    def no_tokenizing(job):
        raise AssertionError("tokenized before the pyarrow check")
    monkeypatch.setattr(P, "_tokenize_unit", no_tokenizing)
    with pytest.raises(ValueError) as e:
        prepare("aa,bb", str(tmp_path / "out"), vocab_size=320, data_dir=dirs["culturax"])
    msg = str(e.value)
    assert "pip install pyarrow" in msg and "aa_part_00000.parquet" in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "out")
    assert read_all(dirs["madlad"], "aa") == docs["aa"]
