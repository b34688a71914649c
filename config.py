"""
Settings from the command line, checked before any work, and the run directory they are recorded in.

    PRESETS         the named overrides of train.py's module-level defaults (--preset tiny, planted, gpu, ...)
    parse_args      --key value / --key=value over train.py's module-level defaults and a preset
    check_settings  every setting that could only fail later (or silently train nonsense), one line each
    RunDir          OUT/: a lock (one run at a time) and config.json (one set of settings per folder)
    and the checks of a run folder and its data cache that train.py makes before any work.
"""
import ast
import fcntl
import json
import math
import os
import sys

import data
import group
from common import check_device, save_json, unwritable
from model import load_checkpoint

GROUP_METHODS = ("agglomerative", "minmax", "seed")

# presets: train.py's module-level defaults are the `default` preset; each other one overrides some of them
PRESETS = {
    "default": {},
    # every stage at toy size: a smoke test of the whole pipeline in seconds on a CPU
    "tiny": dict(vocab_size=1024, n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8,
                 base_steps=60, profile_steps=2, profile_batch=4, profile_repeats=1, profile_windows=16, n_groups=3,
                 stage1_steps=6, stage2_steps=24, eval_interval=30, eval_windows=2, ckpt_interval=50,
                 base_langs="all", eps=0.6, lr=5e-4, variants="cpt,dmoe,random,all_layers"),
    # one GPU, bundled corpus: the default's regime (base on BLOOM's 10 languages, every layer MoE, the
    # seen languages in pairs and each new one alone: 13 experts), sized from the CPU map (docs/EXPERIMENTS.md
    # §5) since a GPU makes steps cheap: twice the width (1.9M parameters), 32 x 128-token batches, the
    # default's 3.3M base tokens (800 steps) and twice its tokens after base (100 + 900 steps = 4.1M tokens:
    # on the map the MoE gain grew with the tokens after base, and twice the default's was its best point),
    # lr after base the default's 2/5 of base_lr
    "gpu": dict(n_head=4, n_embd=128, batch_size=32, base_steps=800, base_lr=3e-3, lr=1.2e-3, profile_windows=512,
                log_interval=10, eval_interval=100, eval_windows=64),
    # the planted world of corpora/planted.py (12 languages in 4 known families, a new world per --seed):
    # a model whose FFN holds about one family's table, on a CPU in under 3 minutes. block_size 256 keeps
    # the profile on the tables: a window's first marker, which no model can predict, adds the same
    # gradient to every window of a language, and longer windows dilute it. eps 0: both layers MoE (at
    # d = 32 the tables live in both FFNs). Why each setting: docs/EXPERIMENTS.md §4
    "planted": dict(data_dir="planted", langs="12", out="out-planted", vocab_size=832, n_layer=2, n_head=2,
                    n_embd=32, block_size=256, batch_size=8, base_steps=3000, base_lr=1e-2, profile_windows=180,
                    n_groups=4, eps=0.0, stage1_steps=500, stage2_steps=500, lr=3e-3, variants="cpt,dmoe,random"),
    # one GPU, a user corpus (--data_dir): GPT-2-small shape (111M parameters), 0.5M-token batches;
    # base 5,000 steps = 2.6B tokens = 24 tokens per parameter (Chinchilla-optimal is ~20), then 0.5B more
    "gpu_large": dict(vocab_size=32768, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=32,
                      grad_accum=16, base_lr=6e-4, base_steps=5000, profile_windows=1024, last_layers=3, stage1_steps=100,
                      stage2_steps=900, lr=3e-4, log_interval=10, eval_interval=500, eval_windows=100,
                      ckpt_interval=250, n_groups=6, eps=0.6, variants="cpt,dmoe,random,all_layers"),
}


def parse_args(argv, defaults, presets, aliases=None, doc="", prog="train.py"):
    """`--key value` or `--key=value` for every key of `defaults`; a --preset first, explicit keys win.
    Returns the settings dict."""
    given, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(doc)
            print("settings (default value):")
            for k, v in defaults.items():
                print(f"  --{k} {v!r}")
            print("presets: " + ", ".join(f"{p} {o}" for p, o in presets.items()))
            sys.exit(0)
        if not arg.startswith("--"):
            raise SystemExit(f"error: unexpected argument {arg!r}; settings look like --key value (see --help)")
        key, eq, val = arg[2:].partition("=")
        key = (aliases or {}).get(key, key)
        if not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: --{key} needs a value")
            val, i = argv[i + 1], i + 1
        i += 1
        if key not in defaults:
            raise SystemExit(f"error: unknown setting --{key}; see python {prog} --help")
        given[key] = val
    cfg = dict(defaults)
    p = given.get("preset", cfg["preset"])
    if p not in presets:
        raise SystemExit(f"error: unknown preset {p!r}; choose one of {', '.join(presets)}")
    cfg.update(presets[p])
    if given.get("langs") == "128":   # the paper's 128-language setting (docs/METHOD.md §4)
        many = {k: v for k, v in dict(n_groups=16, group_method="seed").items() if k not in given}
        if many:
            print("note: --langs 128 uses the paper's setting for it: "
                  + " ".join(f"--{k} {v}" for k, v in many.items()))
        cfg.update(many)
    for key, val in given.items():
        cfg[key] = _typed(key, val, defaults[key])
    cfg["preset"] = p
    return cfg


def _typed(key, val, default):
    """Parse `val` to the type of the setting's default, or stop with a one-line error."""
    if isinstance(default, str):
        return val
    try:
        v = ast.literal_eval(val)
    except (ValueError, SyntaxError):
        v = None
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            isinstance(default, float) or float(v).is_integer())
    if not ok:
        raise SystemExit(f"error: --{key} expects {type(default).__name__}, got {val!r}")
    return type(default)(v)


def check_settings(cfg, known_variants, pipeline=True):
    """Refuse, with one line each, every setting that could only fail later (or silently train nonsense).
    Returns the pipeline's language list (None with pipeline=False: adapt.py checks its own languages).
    Nothing is written before this passes."""
    def need(ok, msg):
        if not ok:
            raise SystemExit(f"error: {msg}")
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "base_steps",
              "profile_steps", "profile_batch", "profile_repeats", "profile_windows", "top_k", "log_interval", "eval_interval",
              "eval_windows", "ckpt_interval"):
        need(cfg[k] >= 1, f"--{k} must be at least 1, got {cfg[k]}")
    for k in ("stage1_steps", "stage2_steps", "last_layers", "seed", "data_seed", "max_tokens_per_lang"):
        need(cfg[k] >= 0, f"--{k} must be 0 or more, got {cfg[k]}")
    need(cfg["stage1_steps"] + cfg["stage2_steps"] >= 1, "--stage1_steps + --stage2_steps must be at least 1")
    for k in ("base_lr", "lr", "profile_lr"):
        need(math.isfinite(cfg[k]) and cfg[k] > 0, f"--{k} must be a positive number, got {cfg[k]}")
    for k in ("weight_decay", "grad_clip", "sample_alpha", "router_alpha", "router_alpha2", "balance_coef", "z_coef"):
        need(math.isfinite(cfg[k]) and cfg[k] >= 0, f"--{k} must be 0 or more, got {cfg[k]}")
    for k in ("dropout", "beta1", "beta2", "warmup_frac"):
        need(0 <= cfg[k] < 1, f"--{k} must be in [0, 1), got {cfg[k]}")
    need(0 <= cfg["min_lr_frac"] <= 1, f"--min_lr_frac must be in [0, 1], got {cfg['min_lr_frac']}")
    need(math.isfinite(cfg["eps"]), f"--eps must be a number, got {cfg['eps']}")
    need(cfg["n_embd"] % cfg["n_head"] == 0,
         f"--n_embd {cfg['n_embd']} must be divisible by --n_head {cfg['n_head']}")
    need(cfg["last_layers"] <= cfg["n_layer"], f"--last_layers {cfg['last_layers']} > --n_layer {cfg['n_layer']}")
    need(cfg["vocab_size"] >= 320 and cfg["vocab_size"] % 64 == 0,
         f"--vocab_size must be a multiple of 64 and at least 320, got {cfg['vocab_size']}")
    need(cfg["vocab_size"] <= data.MAX_VOCAB, f"--vocab_size {cfg['vocab_size']} is more than o200k has "
         f"(at most {data.MAX_VOCAB}: 256 bytes + EOT + every merged o200k token); choose a smaller one")
    need(cfg["profile_method"] in ("adam", "gradient"), f"--profile_method {cfg['profile_method']!r}: choose adam or gradient")
    need(cfg["profile_split"] in ("parallel", "train"), f"--profile_split {cfg['profile_split']!r}: choose parallel or train")
    need(cfg["profile_method"] == "adam" or cfg["profile_windows"] >= cfg["profile_repeats"],
         "--profile_windows must be at least --profile_repeats (every repeat needs a window)")
    need(cfg["group_method"] in GROUP_METHODS,
         f"--group_method {cfg['group_method']!r}: choose one of {', '.join(GROUP_METHODS)}")
    need(cfg["device"] in ("auto", "cpu", "cuda", "mps") or cfg["device"].startswith("cuda:"),
         f"--device {cfg['device']!r}: choose auto, cpu, cuda or mps")
    if cfg["device"] != "auto":
        check_device(cfg["device"])   # cuda:N that is not here, mps without MPS: one line, before any work
    if cfg["data_cache"]:
        why = None if os.path.isfile(os.path.join(cfg["data_cache"], "meta.json")) else unwritable(cfg["data_cache"], "folder")
        need(why is None, f"--data_cache {cfg['data_cache']} {why}; give another directory")
    need(cfg["dtype"] in ("auto", "float32", "bfloat16"), f"--dtype {cfg['dtype']!r}: choose auto, float32 or bfloat16")
    need(cfg["compile"] in ("auto", "True", "False"), f"--compile {cfg['compile']!r}: choose auto, True or False")
    need(not os.path.isfile(cfg["out"]), f"--out {cfg['out']} is a file; give a directory")
    if not pipeline:
        return None
    wanted = [v.strip() for v in cfg["variants"].split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(known_variants))
    need(wanted and not unknown, f"--variants {cfg['variants']!r}: choose from {','.join(known_variants)}")
    need(len(set(wanted)) == len(wanted), f"--variants {cfg['variants']!r} names a variant twice")
    spec = cfg["langs"].split(",")
    repeated = sorted({l for l in spec if spec.count(l) > 1})
    need(not repeated, f"--langs names {','.join(repeated)} more than once")
    try:
        from corpora.bundled import resolve_langs   # the prepare step's: which languages have text
        lang_list = resolve_langs(cfg["langs"], cfg["data_dir"] or None, cache=cfg["data_cache"])
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    n = len(lang_list)
    need(n >= 2, f"--langs {cfg['langs']}: the method groups languages; give at least 2")
    need(cfg["n_groups"] == 0 or 2 <= cfg["n_groups"] <= n,
         f"--n_groups must be 0 (pairs) or in 2..{n} (the number of languages), got {cfg['n_groups']}")
    need(cfg["new_experts"] in ("own", "grouped"), f"--new_experts {cfg['new_experts']!r}: choose own or grouped")
    return lang_list


def resolve_groups(cfg, lang_list, base_langs):
    """--new_experts and --n_groups -> (the languages with an expert of their own: under own, those the base
    never saw; the number of groups, --n_groups 0 resolved to pairs by group.pair_count). cfg keeps the
    setting as given. One line for a count that cannot work."""
    alone = [l for l in lang_list if l not in base_langs] if cfg["new_experts"] == "own" else []
    k = cfg["n_groups"] or group.pair_count(len(lang_list), len(alone))
    asked = f"--n_groups {cfg['n_groups']}" + ("" if cfg["n_groups"] else f" (pairs: {k})")
    if k <= len(alone):
        raise SystemExit(f"error: {asked} leaves no expert for the {len(lang_list) - len(alone)} languages "
                         f"the base saw, after one for each of the {len(alone)} new ones (--new_experts own); "
                         f"give more than {len(alone)}, 0 (pairs) or --new_experts grouped")
    if k < 2:
        raise SystemExit(f"error: {asked} is one expert, which no router can choose among; give 2 or more")
    if cfg["top_k"] > k:
        raise SystemExit(f"error: --top_k {cfg['top_k']} > {asked} experts")
    if cfg["group_method"] == "minmax":   # the exhaustive search's size, known before any work
        n, m = len(lang_list) - len(alone), k - len(alone)
        n_sub = group.minmax_subsets(n, m)
        if n_sub > group.MAX_SUBSETS:
            raise SystemExit(f"error: --group_method minmax would search {n_sub:,} subsets for {n} languages in {m} "
                             f"groups (at most {group.MAX_SUBSETS:,}); use --group_method seed or agglomerative")
    return alone, k



class RunDir:
    """OUT/ as a run's home. open() takes a lock (a second run on the same folder exits at once, naming the
    first one's pid) and refuses a folder that holds a run with other settings; write_config() records the
    settings once the run has passed its checks and its data is ready, so a failed start blocks nothing."""
    IGNORED = ("device", "compile", "log_interval", "eval_interval", "ckpt_interval", "out", "variants", "resume")
    # settings added after some runs were made, and what such a run did: a folder without the key is one
    # of those runs (an older run with other settings is refused, not continued under today's default)
    BEFORE = {"new_experts": "grouped", "router_alpha2": 0.0}
    _held = {}   # folder -> this process's open lock file (one run after another in one process, e.g. tests)

    def __init__(self, cfg, keys=None):
        self.cfg, self.path = cfg, cfg["out"]
        self.keys = keys or [k for k in cfg if k not in self.IGNORED]

    def open(self):
        where = os.path.abspath(self.path)
        if where in RunDir._held:          # an earlier run of this same process (finished or failed)
            RunDir._held.pop(where).close()
        try:
            os.makedirs(self.path, exist_ok=True)
            lock = open(os.path.join(self.path, ".lock"), "a+")
        except OSError as e:
            raise SystemExit(f"error: cannot write to --out {self.path} ({e.strerror}); pass another --out")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)   # released by the OS when this process ends
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            lock.close()
            raise SystemExit(f"error: {self.path}/ is in use by another run (pid {pid}); wait for it or pass another --out")
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        RunDir._held[where] = lock
        old = self._old_config()
        old = dict(self.BEFORE, **old) if old else old
        diff = [k for k in self.keys if k in old and old[k] != self.cfg[k]]
        if diff:
            k = diff[0]
            raise SystemExit(f"error: {self.path}/ holds a run with {k}={old[k]!r} (now {self.cfg[k]!r}); "
                             f"pass another --out or delete {self.path}/ to start over")
        return self

    def _old_config(self):
        path = os.path.join(self.path, "config.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def write_config(self):
        save_json({k: self.cfg[k] for k in self.keys}, os.path.join(self.path, "config.json"))


# ----------------------------------------------------------------------------------------------------
# train.py's checks of what it is given: base languages, data cache, run folder

# the 10 of the 18 languages that BLOOM's pretraining corpus has (its model card); the paper's base had
# never seen the other 8 (de it ja ko nl ru th uk), and its continued training taught them
BLOOM_LANGS = "ar bn fr hi id ta te ur vi zh".split()


def resolve_base_langs(cfg, lang_list):
    """--base_langs -> the languages the dense base is pretrained on (one line for a bad list)."""
    spec = cfg["base_langs"].strip()
    if spec == "auto" and cfg["langs"] == "18" and not cfg["data_dir"]:   # the paper's 18: BLOOM's 10
        return [l for l in lang_list if l in BLOOM_LANGS]
    if spec in ("all", "auto"):
        return list(lang_list)
    chosen = [l.strip() for l in spec.split(",") if l.strip()]
    unknown = [l for l in chosen if l not in lang_list]
    if not chosen or unknown or len(set(chosen)) < len(chosen):
        raise SystemExit(f"error: --base_langs {spec!r} must be auto, all, or distinct languages of this run's "
                         f"--langs ({','.join(lang_list)})" + (f"; not in it: {','.join(unknown)}" if unknown else ""))
    return [l for l in lang_list if l in chosen]   # in the run's order


def default_data_cache(cfg):
    """data_cache/<langs>-v<vocab>...: named by what decides the tokens (not --seed: seeds share a test set)."""
    return data.default_cache(cfg["langs"], cfg["vocab_size"], cfg["data_seed"], cfg["data_dir"] or None,
                              cfg["max_tokens_per_lang"])


def refuse_another_runs_cache(cfg, cache, lang_list):
    """A --data_cache prepared with other languages, vocabulary size, corpus folder or data seed belongs to
    another run: refuse it, rather than rebuild it in place under that run's checkpoints."""
    try:
        with open(os.path.join(cache, "meta.json"), encoding="utf-8") as f:
            had = json.load(f).get("args") or {}
    except (OSError, ValueError, AttributeError):
        return   # no cache yet (or an unreadable one, which data.prepare rebuilds)
    asked = {"langs": lang_list, "vocab_size": cfg["vocab_size"], "seed": cfg["data_seed"],
             "data_dir": os.path.abspath(cfg["data_dir"]) if cfg["data_dir"] else None,
             "max_tokens_per_lang": cfg["max_tokens_per_lang"]}
    differ = [k for k in asked if k in had and had[k] != asked[k]]
    if differ:
        was = "; ".join(f"{k} {','.join(had[k]) if k == 'langs' else had[k]}" for k in differ)
        raise SystemExit(f"error: --data_cache {cache} holds another run's tokens ({was}); pass another "
                         f"--data_cache, or leave it out (the default one is named by these settings)")


def trained_on(out):
    """(file, data fingerprint) of what this run folder already trained on (its profile or base), or None:
    the prepare step then keeps those tokens rather than rebuild the cache under the run."""
    for name, read in (("profile.json", lambda p: json.load(open(p))), ("base.pt", load_checkpoint)):
        path = os.path.join(out, name)
        try:
            saved = read(path) if os.path.exists(path) else None
        except (OSError, ValueError, RuntimeError):
            continue
        if isinstance(saved, dict) and saved.get("data_fingerprint"):
            return path, saved["data_fingerprint"]
    return None


def check_profile_langs(cfg, lang_list):
    """Before any work: a profile.json or groups.json left in --out by another language set is refused."""
    for name in ("profile.json", "groups.json"):
        path = os.path.join(cfg["out"], name)
        if not os.path.exists(path):
            continue
        redo = "profile" if name == "profile.json" else "group"
        try:
            with open(path) as f:
                langs = json.load(f)["langs"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SystemExit(f"error: {path} is not a readable {name}; delete it to {redo} again")
        if langs != lang_list:
            raise SystemExit(f"error: {path} {'profiles' if name == 'profile.json' else 'groups'} "
                             f"{','.join(langs)}, not this run's {','.join(lang_list)}; pass another --out, "
                             f"or delete it to {redo} again")