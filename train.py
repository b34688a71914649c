"""
The whole DMoE ("Group then Scale") pipeline, one command:

    python train.py --langs 18                        # default preset, ~15 min on a 2-core CPU
    python train.py --langs 18 --preset tiny --out out-tiny   # smoke run of every stage, seconds
    python train.py --langs ar,de,fr,ru,uk --n_groups 2 # any subset of languages

Stages, each written to OUT/ and skipped when already done (a killed run picks up where it stopped):

    data      bundled corpus (or --data_dir) -> compact o200k vocabulary -> uint32 token files
    base      dense GPT pretrained on all languages (temperature sampling, p ~ size^0.3)
    profile   each language fine-tunes a copy of base alone; per-layer parameter deviation  (profile.py)
    group     cosine similarity of deviations -> balanced language groups; eps rule -> MoE layers (group.py)
    variants  with the same number of tokens after base:
                cpt         dense continual pre-training (the baseline DMoE must beat)
                dmoe        upcycle the chosen layers, one expert per group; stage 1 routes by group
                            (+ router cross-entropy), stage 2 learns top-2 routing (+ load balancing)
                random      the same, with random groups of the same sizes
                all_layers  the same, with every FFN upcycled (Branch-Train-MiX shape)
    eval      per-language loss / perplexity / bits-per-byte table -> OUT/results.json

Settings are module-level defaults below; presets override them and `--key value` / `--key=value`
overrides both (the value must parse to the default's type; unknown keys are an error).
"""
import ast
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

import data as D
import eval as E
import group as G
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint
from profile import profile_languages
from upcycle import add_expert, upcycle

# ----------------------------------------------------------------------------------------------------
# default settings: the `default` preset, sized for the bundled 18-language corpus on a 2-core CPU
langs = "18"                 # "18", "128", an integer N, or a comma list like "ar,de,fr"
out = "out"                  # run directory: checkpoints, logs, profile.json, groups.json, results.json
data_dir = ""                # a user corpus: DIR/<lang>.jsonl ({"text": ...} per line) or DIR/<lang>.txt
data_cache = ""              # tokenized corpus; default data_cache/<langs>-v<vocab_size>
vocab_size = 8192            # compact vocabulary: 256 bytes + EOT + the most frequent o200k tokens
seed = 0                     # every random choice of training: init, batches, profiling, random groups
data_seed = 0                # the train/val split of the documents (kept apart so seeds share one test set)
preset = "default"           # default | tiny | gpu | gpu_large   (see PRESETS below)
# model
n_layer = 4
n_head = 4
n_embd = 256
block_size = 128
dropout = 0.0
# batches
batch_size = 16              # sequences per micro-batch
grad_accum = 1               # micro-batches per optimizer step
sample_alpha = 0.3           # language sampling p(lang) ~ n_tokens ** sample_alpha (PAPER.md)
# dense base pretraining
base_steps = 400
base_lr = 2e-3
# profile (PAPER.md step 1)
profile_steps = 10           # fine-tuning steps per language
profile_lr = 1e-4
profile_batch = 8 
profile_repeats = 2          # average deviations over repeats (the grouping is noisy with few tokens)
last_layers = 0              # deviation vector = FFN deltas of the last N layers; 0 = profile.py's rule
# group (PAPER.md steps 2-3)
n_groups = 6                 # experts per MoE layer = number of language groups
group_method = "agglomerative"  # agglomerative | minmax | seed
eps = 0.6                    # a layer becomes MoE iff its normalised mean FFN deviation >= eps
# after base: every variant gets stage1_steps + stage2_steps optimizer steps of the same batch size
stage1_steps = 20            # routing by language group + router cross-entropy (10% in the paper)
stage2_steps = 180           # learned top-k routing + load balancing
lr = 6e-4                    # peak lr after base, all variants alike
top_k = 2
router_alpha = 1.28          # weight of the router cross-entropy in stage 1 (PAPER.md)
balance_coef = 0.02          # Switch load-balancing loss weight in stage 2 (PAPER.md)
z_coef = 0.0                 # router z-loss weight
variants = "cpt,dmoe,random,all_layers"
# new-language adaptation: python train.py --adapt be,sr --from out/dmoe.pt  (PAPER.md step 6)
adapt = ""                   # comma list of new languages; empty = run the pipeline
adapt_from = ""              # the trained MoE checkpoint to extend (alias: --from)
adapt_steps = 100
adapt_lr = 2e-4
# optimizer (both phases)
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_frac = 0.03
min_lr_frac = 0.1            # cosine decays to lr * min_lr_frac
# evaluation and checkpoints
resume = True                # continue unfinished stages found in --out (False: refuse to touch them)
log_interval = 1             # steps between loss / tok/s records (each waits for the GPU; GPU presets: 10)
eval_interval = 100          # steps between validation estimates in the progress log
eval_windows = 16            # held-out windows per language in the final evaluation
ckpt_interval = 100          # steps between resumable checkpoints inside a stage
# system
device = "auto"              # auto | cpu | cuda | mps
dtype = "auto"               # auto (bf16 on cuda if supported, else fp32) | float32 | bfloat16
compile = "auto"             # auto (on for cuda) | True | False
# ----------------------------------------------------------------------------------------------------

PRESETS = {
    "default": {},
    # every stage at toy size: a smoke test of the whole pipeline in well under two minutes on a CPU
    "tiny": dict(vocab_size=1024, n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8,
                 base_steps=60, profile_steps=2, profile_batch=4, profile_repeats=1, n_groups=3,
                 stage1_steps=6, stage2_steps=24, eval_interval=30, eval_windows=2, ckpt_interval=50),
    # one GPU, bundled corpus (~0.8M training tokens): wider and deeper, dropout against overfitting
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=32, dropout=0.1,
                base_steps=1500, profile_steps=10, profile_batch=32, profile_repeats=3,
                stage1_steps=100, stage2_steps=900, lr=3e-4, log_interval=10, eval_interval=250, eval_windows=64,
                ckpt_interval=250),
    # one GPU, a user corpus of billions of tokens (--data_dir): GPT-2-small shape, 0.5M-token batches
    "gpu_large": dict(vocab_size=32768, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=32,
                      grad_accum=16, base_lr=6e-4, base_steps=20000, profile_steps=10, profile_batch=32,
                      profile_repeats=3, stage1_steps=500, stage2_steps=4500, lr=3e-4, grad_clip=1.0,
                      log_interval=10, eval_interval=1000, eval_windows=100, ckpt_interval=500),
}
ALIASES = {"from": "adapt_from"}
DEFAULTS = {k: v for k, v in list(globals().items())
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k.islower()}


def parse_args(argv):
    """`--key value` or `--key=value` for every setting above; presets first, explicit keys win."""
    defaults = DEFAULTS
    given, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(__doc__)
            print("settings (default value):")
            for k, v in defaults.items():
                print(f"  --{k} {v!r}")
            print("presets: " + ", ".join(f"{p} {o}" for p, o in PRESETS.items()))
            sys.exit(0)
        if not arg.startswith("--"):
            raise SystemExit(f"error: unexpected argument {arg!r}; settings look like --key value (see --help)")
        key, eq, val = arg[2:].partition("=")
        key = ALIASES.get(key, key)
        if not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: --{key} needs a value")
            val, i = argv[i + 1], i + 1
        i += 1
        if key not in defaults:
            raise SystemExit(f"error: unknown setting --{key}; see python train.py --help")
        given[key] = val
    cfg = dict(defaults)
    p = given.get("preset", cfg["preset"])
    if p not in PRESETS:
        raise SystemExit(f"error: unknown preset {p!r}; choose one of {', '.join(PRESETS)}")
    cfg.update(PRESETS[p])
    if given.get("langs") == "128":   # the paper's many-language setting: 16 groups, seed-pair growth rule
        cfg.update(n_groups=16, group_method="seed")
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


# ----------------------------------------------------------------------------------------------------
# system: device, precision, compile, and (under torchrun) the process group

class Env:
    """Where and how we run. Under `torchrun --nproc_per_node=N train.py ...` every rank builds one."""

    def __init__(self, cfg):
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        dev = cfg["device"]
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
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
            self.peak_flops = peak_flops(torch.cuda.get_device_name(dev))
        else:
            self.peak_flops = None

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


def flops_per_token(model, routing):
    """6 * active params + attention (nanoGPT's estimate): MoE layers count only the experts a token uses."""
    c = model.config
    n = model.num_params() - model.transformer.wpe.weight.numel()
    for moe in model.moe_modules():
        per_expert = sum(p[0].numel() for p in (moe.w_fc, moe.w_proj, moe.b_fc, moe.b_proj) if p is not None)
        used = 1 if routing == "group" else min(c.top_k, moe.n_experts)
        n -= (moe.n_experts - used) * per_expert
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def checkpoint_or_exit(path):
    """load_checkpoint, with a missing or unreadable file as a one-line error instead of a traceback."""
    try:
        return load_checkpoint(path)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}")


def lr_at(step, steps, peak, cfg):
    """Linear warmup over warmup_frac of the steps, then cosine down to peak * min_lr_frac."""
    warm = max(1, int(cfg["warmup_frac"] * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (cfg["min_lr_frac"] + (1 - cfg["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ----------------------------------------------------------------------------------------------------
# one training stage: dense base, cpt, an MoE stage, or new-language adaptation. Resumable.

class Stage:
    """What a stage trains and how: routing, auxiliary loss weights, which parameters move."""

    def __init__(self, name, steps, peak_lr, data, routing="learned", lang_to_expert=None,
                 router_coef=0.0, balance_coef=0.0, z_coef=0.0, only_moe=False, meta=None):
        self.name, self.steps, self.peak_lr = name, steps, peak_lr
        self.data = data                        # batch stream: stages with the same name see the same batches
        self.routing = routing                  # "learned" top-k, or "group": sequence -> its group's expert
        self.lang_to_expert = lang_to_expert    # {lang: expert id}: the groups (needed by "group" routing)
        self.router_coef = router_coef          # weight of the router cross-entropy against the group id
        self.balance_coef = balance_coef        # weight of the Switch load-balancing loss
        self.z_coef = z_coef                    # weight of the router z-loss
        self.only_moe = only_moe                # adaptation: train routers + experts only, no weight decay
        self.meta = meta or {}                  # stored in the checkpoint: groups, lang_to_expert, variant


def run_stage(cfg, stage, make_model, dataset, env):
    """Train make_model() for stage.steps, or resume OUT/<name>.pt, or skip it when done. Returns the model.
    Under DDP every rank draws the same global batch and trains on its own slice of it, so the update is
    the same as a single process's with that global batch; only rank 0 logs and writes."""
    path = os.path.join(cfg["out"], stage.name + ".pt")
    ckpt = checkpoint_or_exit(path) if os.path.exists(path) else None
    if ckpt is not None and ckpt.get("done"):
        env.print(f"[{stage.name}] done already ({path}), skipping")
        return model_from_checkpoint(ckpt, env.device)
    if ckpt is not None and not cfg["resume"]:
        raise SystemExit(f"error: {path} holds an unfinished stage; run with --resume True to continue it "
                         f"or pass another --out")
    model = model_from_checkpoint(ckpt, env.device) if ckpt else make_model().to(env.device)
    if stage.only_moe:   # new-language adaptation: only routers and experts move, and nothing decays
        for n, p in model.named_parameters():
            p.requires_grad = any(n.startswith(f"transformer.h.{l}.ffn.") for l in model.config.moe_layers)
    wd = 0.0 if stage.only_moe else cfg["weight_decay"]
    optimizer = model.configure_optimizers(wd, stage.peak_lr, (cfg["beta1"], cfg["beta2"]), env.device_type)
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + sum(map(ord, stage.data)))
    step = 0
    log_path = os.path.join(cfg["out"], "logs", stage.name + ".jsonl")
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        step = ckpt["step"]
        env.print(f"[{stage.name}] resuming from step {step}/{stage.steps} ({path})")
        if env.master and os.path.exists(log_path):   # drop log lines written after that checkpoint
            with open(log_path) as f:
                keep = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
            with open(log_path, "w") as f:
                f.writelines(keep)
    fwd = torch.compile(model, dynamic=False) if env.use_compile else model
    if env.ddp:
        ids = [env.device] if env.device_type == "cuda" else None
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=ids)

    B, T, accum = cfg["batch_size"], cfg["block_size"], cfg["grad_accum"]
    if B % env.world:
        raise SystemExit(f"error: --batch_size {B} must be divisible by the number of processes ({env.world})")
    mine = slice(env.rank * B // env.world, (env.rank + 1) * B // env.world)
    probs = dataset.sampling_probs(cfg["sample_alpha"])
    to_expert = None
    if stage.lang_to_expert is not None:
        to_expert = torch.tensor([stage.lang_to_expert[l] for l in dataset.langs], device=env.device)
    tokens_per_step = B * T * accum
    fpt = flops_per_token(model, stage.routing)
    if env.master:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "a") if env.master else None

    def save(done):
        if env.master:
            save_checkpoint(path, {
                "model": model.state_dict(), "model_args": model.config.__dict__.copy(),
                "optimizer": optimizer.state_dict(), "rng": gen.get_state(), "step": step, "done": done,
                "stage": stage.name, "config": cfg, "vocab": dataset.tokenizer.state_dict(),
                "langs": dataset.langs, "groups": stage.meta.get("groups"),
                "lang_to_expert": stage.meta.get("lang_to_expert"), "meta": stage.meta})
        env.barrier()

    model.train()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, dynamic_ncols=True, mininterval=0.5,
               disable=not env.master)
    t0, first_step, timed_from = time.time(), step, None
    while step < stage.steps:
        lr_now = lr_at(step, stage.steps, stage.peak_lr, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        for micro in range(accum):
            x, y, li = dataset.mixed_batch("train", B, T, probs, gen, env.device)   # the global batch
            x, y, li = x[mine], y[mine], li[mine]                                  # this rank's share
            groups = to_expert[li] if to_expert is not None else None
            if env.ddp:   # average gradients across ranks on the last micro-batch only
                fwd.require_backward_grad_sync = micro == accum - 1
            with env.autocast():
                _, lm_loss, aux = fwd(x, y, groups=groups, routing=stage.routing)
            loss = lm_loss
            if stage.router_coef and "router_ce" in aux:
                loss = loss + stage.router_coef * aux["router_ce"]
            if stage.balance_coef and "balance" in aux:
                loss = loss + stage.balance_coef * aux["balance"]
            if stage.z_coef and "z" in aux:
                loss = loss + stage.z_coef * aux["z"]
            (loss / accum).backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if not env.master:
            continue
        bar.update(1)
        if timed_from is None:   # tokens/s (and MFU) leave out this run's first step: it compiles
            lm_loss.item()                # waits for the step to finish
            timed_from = time.time()
        evaluate = step % cfg["eval_interval"] == 0 or step == stage.steps
        checkpoint = step % cfg["ckpt_interval"] == 0 and step < stage.steps
        if step % cfg["log_interval"] and not (evaluate or checkpoint):
            continue   # .item() waits for the GPU to finish the step: not on every step
        loss_value = lm_loss.item()
        timed = step - first_step - 1
        tps = tokens_per_step * timed / (time.time() - timed_from) if timed else tokens_per_step / (time.time() - t0)
        rec = {"step": step, "tokens": step * tokens_per_step, "loss": round(loss_value, 4), "lr": lr_now}
        for k in ("router_ce", "balance"):
            if k in aux:
                rec[k] = round(aux[k].item(), 4)
        post = dict(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr_now:.1e}")
        if env.peak_flops:
            rec["mfu"] = round(100 * fpt * tps / (env.peak_flops * env.world), 2)
            post["mfu"] = f"{rec['mfu']:.1f}%"
        bar.set_postfix(post, refresh=False)
        if evaluate:
            res = E.evaluate(model, dataset, dataset.langs, split="val", block_size=T, max_windows=2,
                             routing=stage.routing, lang_to_expert=stage.lang_to_expert, device=env.device)
            rec["val_loss"] = round(sum(r["loss"] for r in res.values()) / len(res), 4)
            model.train()
            bar.write(f"[{stage.name}] step {step:5d}/{stage.steps} | loss {rec['loss']:.3f} | "
                      f"val {rec['val_loss']:.3f} | lr {lr_now:.1e} | tok/s {tps:,.0f}"
                      + (f" | mfu {rec['mfu']:.1f}%" if "mfu" in rec else ""))
        log.write(json.dumps(rec) + "\n")
        if checkpoint:
            log.flush()
            save(done=False)
    bar.close()
    if log:
        log.close()
    save(done=True)
    return model


# ----------------------------------------------------------------------------------------------------
# the pipeline

def check_run_dir(cfg):
    """Refuse to mix two different runs in one directory; nothing is deleted."""
    os.makedirs(cfg["out"], exist_ok=True)
    path = os.path.join(cfg["out"], "config.json")
    keep = {k: v for k, v in cfg.items() if k not in ("device", "compile", "log_interval", "eval_interval",
                                                      "ckpt_interval", "out", "variants")}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in keep if k in old and old[k] != keep[k]]
        if diff:
            k = diff[0]
            raise SystemExit(f"error: {cfg['out']}/ holds a run with {k}={old[k]!r} (now {keep[k]!r}); "
                             f"pass another --out or delete {cfg['out']}/ to start over")
    G.save_json(keep, path)


def load_data(cfg, env, lang_list, cache, tokenizer=None):
    """Tokenize (rank 0 first; the others then reuse its cache) and check every language fits a block."""
    try:
        if env.master:
            dataset = D.prepare(lang_list, cache, vocab_size=cfg["vocab_size"], data_dir=cfg["data_dir"] or None,
                                seed=cfg["data_seed"], tokenizer=tokenizer)
        env.barrier()
        if not env.master:
            dataset = D.Dataset.load(cache)
        for l in lang_list:   # fail now, not an hour in, if a language is too short for the block
            dataset.eval_windows(l, "val", cfg["block_size"], 1)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    return dataset


def default_cache(cfg, langs_spec):
    name = f"{langs_spec.replace(',', '_')[:60]}-v{cfg['vocab_size']}"
    if cfg["data_seed"]:
        name += f"-split{cfg['data_seed']}"
    if cfg["data_dir"]:
        name += "-" + os.path.basename(os.path.normpath(cfg["data_dir"]))
    return os.path.join("data_cache", name)


def main(argv):
    cfg = parse_args(argv)
    torch.manual_seed(cfg["seed"])
    env = Env(cfg)
    if cfg["adapt"]:
        return run_adaptation(cfg, env)
    if env.master:
        check_run_dir(cfg)
    env.barrier()
    t_start = time.time()
    env.print(f"nanoDMoE | preset {cfg['preset']} | device {env.device} x{env.world} | {env.dtype} | "
              f"compile {env.use_compile} | out {cfg['out']}/")

    # -- data ----------------------------------------------------------------------------------------
    cfg["data_cache"] = cfg["data_cache"] or default_cache(cfg, cfg["langs"])
    try:
        lang_list = D.resolve_langs(cfg["langs"], cfg["data_dir"] or None, cache=cfg["data_cache"])
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    dataset = load_data(cfg, env, lang_list, cfg["data_cache"])
    mcfg = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=cfg["block_size"],
                     n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"],
                     top_k=cfg["top_k"])

    # -- base ----------------------------------------------------------------------------------------
    def fresh():
        torch.manual_seed(cfg["seed"])
        return GPT(mcfg)
    base = run_stage(cfg, Stage("base", cfg["base_steps"], cfg["base_lr"], data="base"), fresh, dataset, env)
    base_path = os.path.join(cfg["out"], "base.pt")

    # -- profile: every language fine-tunes a copy of base alone (split across ranks under torchrun) --------
    prof_path = os.path.join(cfg["out"], "profile.json")
    if os.path.exists(prof_path):
        env.print(f"[profile] done already ({prof_path}), skipping")
        with open(prof_path) as f:
            prof = json.load(f)
    else:
        prof = profile_languages(base, dataset, lang_list, steps=cfg["profile_steps"], lr=cfg["profile_lr"],
                                 batch_size=cfg["profile_batch"], block_size=cfg["block_size"],
                                 last_layers=cfg["last_layers"] or None, repeats=cfg["profile_repeats"],
                                 seed=cfg["seed"], device=env.device, progress=env.master,
                                 rank=env.rank, world=env.world)
        prof.pop("vectors")
        if env.master:
            G.save_json(prof, prof_path)
    del base

    # -- group: similarity -> balanced groups; eps rule -> MoE layers ----------------------------------
    grp = G.make_groups(prof, cfg["n_groups"], cfg["group_method"], cfg["eps"], seed=cfg["seed"])
    if env.master:
        G.save_json(grp, os.path.join(cfg["out"], "groups.json"))
        print(G.report(grp, prof))
    groups, moe_layers = grp["groups"], grp["moe_layers"]
    random_groups = G.random_groups(lang_list, [len(g) for g in groups], seed=cfg["seed"])

    # -- variants, all with the same batches and schedule after base -----------------------------------
    wanted = [v.strip() for v in cfg["variants"].split(",") if v.strip()]
    specs = {"cpt": None, "dmoe": (groups, moe_layers), "random": (random_groups, moe_layers),
             "all_layers": (groups, list(range(cfg["n_layer"])))}
    if set(wanted) - set(specs):
        raise SystemExit(f"error: unknown variant(s) {sorted(set(wanted) - set(specs))}; "
                         f"choose from {','.join(specs)}")
    for name in wanted:
        train_variant(cfg, env, name, specs[name], base_path, dataset)
    env.barrier()
    if not env.master:
        return None

    # -- evaluation ----------------------------------------------------------------------------------
    results = {"langs": lang_list, "groups": groups, "random_groups": random_groups, "moe_layers": moe_layers,
               "params": {}, "variants": {}, "forced_group": {}}

    def scores(model, routing, lang_to_expert=None):
        res = E.evaluate(model, dataset, lang_list, split="val", block_size=cfg["block_size"],
                         max_windows=cfg["eval_windows"], routing=routing, lang_to_expert=lang_to_expert,
                         device=env.device)
        return {l: {k: r[k] for k in ("loss", "ppl", "bpb", "tokens", "bytes")} for l, r in res.items()}
    for name in ["base"] + wanted:
        ckpt = load_checkpoint(os.path.join(cfg["out"], name + ".pt"))
        model = model_from_checkpoint(ckpt, env.device)
        results["variants"][name] = scores(model, "learned")
        results["params"][name] = model.num_params()
        if model.config.moe_layers and ckpt.get("lang_to_expert"):
            # every language forced to its own group's expert: how much the groups shaped the experts
            results["forced_group"][name] = scores(model, "group", ckpt["lang_to_expert"])
    results["minutes"] = round((time.time() - t_start) / 60, 2)
    results["config"] = cfg
    print()
    print(E.compare_table(results["variants"], baseline="cpt" if "cpt" in wanted else "base",
                          params=results["params"]))
    if results["forced_group"]:
        forced = {v: E.summarize(r)["ppl"] for v, r in results["forced_group"].items()}
        print("\navg ppl with every language forced to its group's expert (learned routing above): "
              + ", ".join(f"{v} {p:.2f}" for v, p in forced.items()))
    res_path = os.path.join(cfg["out"], "results.json")
    G.save_json(results, res_path)
    print(f"\nwrote {res_path} ({results['minutes']} min)")
    return results


def train_variant(cfg, env, name, spec, base_path, dataset):
    """Two phases after base with identical batches and schedules for every variant: phase 1
    (stage1_steps) and phase 2 (stage2_steps). For MoE variants phase 1 routes by language group and
    trains the router towards the group (PAPER.md stage 1), phase 2 learns top-k routing with load
    balancing (stage 2). `cpt` is the dense model trained on exactly the same batches."""
    def from_base():
        return model_from_checkpoint(load_checkpoint(base_path), env.device)
    s1_path = os.path.join(cfg["out"], name + "_stage1.pt")

    def from_stage1():
        return model_from_checkpoint(load_checkpoint(s1_path), env.device)
    if spec is None:   # dense continual pre-training
        run_stage(cfg, Stage(name + "_stage1", cfg["stage1_steps"], cfg["lr"], data="stage1"), from_base,
                  dataset, env)
        run_stage(cfg, Stage(name, cfg["stage2_steps"], cfg["lr"], data="stage2"), from_stage1, dataset, env)
        return
    groups, layers = spec
    l2e = {l: e for e, g in enumerate(groups) for l in g}
    meta = {"variant": name, "groups": groups, "lang_to_expert": l2e, "moe_layers": layers}

    def upcycled():
        return upcycle(from_base(), layers, len(groups), top_k=cfg["top_k"], seed=cfg["seed"])
    run_stage(cfg, Stage(name + "_stage1", cfg["stage1_steps"], cfg["lr"], data="stage1", routing="group",
                         lang_to_expert=l2e, router_coef=cfg["router_alpha"], meta=meta), upcycled, dataset, env)
    run_stage(cfg, Stage(name, cfg["stage2_steps"], cfg["lr"], data="stage2", routing="learned",
                         balance_coef=cfg["balance_coef"], z_coef=cfg["z_coef"], meta=meta),
              from_stage1, dataset, env)


# ----------------------------------------------------------------------------------------------------
# new-language adaptation (PAPER.md step 6):  python train.py --adapt be,sr --from out/dmoe.pt

def run_adaptation(cfg, env):
    """Add one expert for the new language(s), copied from the expert they are most similar to, and train
    it with the new languages routed to it (+ router loss), updating only routers and experts. Baselines
    on the same batches: the dense `cpt` model fully fine-tuned, and the new expert copied from the
    least similar expert. Reports the new languages' gain and every old language's change."""
    if not cfg["adapt_from"]:
        raise SystemExit("error: --adapt needs --from CKPT, a trained MoE checkpoint such as out/dmoe.pt")
    src = checkpoint_or_exit(cfg["adapt_from"])
    if not src["model_args"].get("moe_layers"):
        raise SystemExit(f"error: {cfg['adapt_from']} is a dense checkpoint; --from needs an MoE one (e.g. out/dmoe.pt)")
    old_cfg, old_langs = src["config"], src["langs"]
    new_langs = [l.strip() for l in cfg["adapt"].split(",") if l.strip()]
    already = [l for l in new_langs if l in old_langs]
    if already:
        raise SystemExit(f"error: {','.join(already)} already trained in {cfg['adapt_from']}; --adapt takes new "
                         f"languages (trained: {','.join(old_langs)})")
    try:
        new_langs = D.resolve_langs(",".join(new_langs), cfg["data_dir"] or None)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    run_dir = os.path.dirname(os.path.abspath(cfg["adapt_from"]))
    cfg["out"] = cfg["out"] if cfg["out"] != "out" else os.path.join(run_dir, "adapt-" + "_".join(new_langs))
    for k in ("block_size", "vocab_size", "top_k"):
        cfg[k] = old_cfg[k]
    if env.master:
        os.makedirs(cfg["out"], exist_ok=True)
    tok = D.Tokenizer.from_state_dict(src["vocab"])
    cache = cfg["data_cache"] or default_cache(cfg, cfg["adapt"]) + "-vocab-of-" + os.path.basename(run_dir)
    cfg["data_cache"] = cache
    new_data = load_data(cfg, env, new_langs, cache, tokenizer=tok)
    old_data = D.Dataset.load(old_cfg["data_cache"])
    model = model_from_checkpoint(src, env.device)
    old_l2e = src["lang_to_expert"]

    # which existing expert is closest to the new languages: perplexity with every MoE layer forced to it
    aff = E.expert_affinity(model, new_data, new_langs, block_size=cfg["block_size"], max_windows=cfg["eval_windows"])
    mean_aff = np.exp(np.log(aff).mean(axis=0))      # (E,) geometric mean ppl over the new languages
    best, worst = int(mean_aff.argmin()), int(mean_aff.argmax())
    env.print(f"[adapt] expert affinity (ppl of {','.join(new_langs)} with every MoE layer forced to e): "
              + "  ".join(f"e{e} {p:.1f}" for e, p in enumerate(mean_aff))
              + f"  -> copy e{best} (least similar: e{worst})")

    def with_new_expert(copy_from):
        def make():
            m = model_from_checkpoint(src, env.device)
            add_expert(m, copy_from)
            return m
        return make
    new_e = model.config.n_experts
    l2e = dict(old_l2e, **{l: new_e for l in new_langs})
    meta = {"variant": "adapt", "groups": src["groups"] + [new_langs], "lang_to_expert": l2e,
            "moe_layers": model.config.moe_layers}
    steps, lr = cfg["adapt_steps"], cfg["adapt_lr"]
    methods = {
        "similar": Stage("adapt_similar", steps, lr, data="adapt", routing="group", lang_to_expert=l2e,
                         router_coef=cfg["router_alpha"], only_moe=True, meta=dict(meta, copied=best)),
        "dissimilar": Stage("adapt_dissimilar", steps, lr, data="adapt", routing="group", lang_to_expert=l2e,
                            router_coef=cfg["router_alpha"], only_moe=True, meta=dict(meta, copied=worst)),
    }
    models = {"before": model}
    models["similar"] = run_stage(cfg, methods["similar"], with_new_expert(best), new_data, env)
    models["dissimilar"] = run_stage(cfg, methods["dissimilar"], with_new_expert(worst), new_data, env)
    cpt_path = os.path.join(run_dir, "cpt.pt")
    if os.path.exists(cpt_path):
        cpt = lambda: model_from_checkpoint(load_checkpoint(cpt_path), env.device)
        models["cpt_before"] = cpt()
        models["cpt_finetune"] = run_stage(cfg, Stage("adapt_cpt", steps, lr, data="adapt"), cpt, new_data, env)
    if not env.master:
        return None

    # evaluate: new languages (learned routing and routed to the new expert), old languages (learned and group)
    report = {"new_langs": new_langs, "old_langs": old_langs, "copied_from": best, "least_similar": worst,
              "affinity": mean_aff.tolist(), "methods": {}}
    kw = dict(block_size=cfg["block_size"], max_windows=cfg["eval_windows"])
    for name, m in models.items():
        r = {"new": E.evaluate(m, new_data, new_langs, routing="learned", **kw),
             "old": E.evaluate(m, old_data, old_langs, routing="learned", **kw)}
        if m.config.moe_layers:   # old languages routed to their own group's expert
            r["old_group"] = E.evaluate(m, old_data, old_langs, routing="group", lang_to_expert=old_l2e, **kw)
        if m.config.n_experts > new_e:   # new languages routed to the new expert
            r["new_group"] = E.evaluate(m, new_data, new_langs, routing="group", lang_to_expert=l2e, **kw)
        report["methods"][name] = {k: {l: {m_: v[m_] for m_ in ("loss", "ppl", "bpb")} for l, v in res.items()}
                                   for k, res in r.items()}
    print(adapt_table(report))
    path = os.path.join(cfg["out"], "adapt.json")
    G.save_json(report, path)
    print(f"\nwrote {path}")
    return report


def adapt_table(rep):
    """New-language perplexity and old-language forgetting of every adaptation method, as text."""
    def avg(res):
        return E.summarize(res)["ppl"]
    lines = [f"{'method':<14} {'new ppl':>8} {'new ppl':>8} {'old ppl':>8} {'Δ old':>8} {'old ppl':>8} {'Δ old':>8}",
             f"{'':<14} {'learned':>8} {'->new e':>8} {'learned':>8} {'learned':>8} {'->own e':>8} {'->own e':>8}",
             "-" * 70]
    for name, r in rep["methods"].items():
        ref = rep["methods"]["cpt_before" if name.startswith("cpt") else "before"]
        cells = [f"{avg(r['new']):8.2f}", f"{avg(r['new_group']):8.2f}" if "new_group" in r else f"{'-':>8}",
                 f"{avg(r['old']):8.2f}", f"{100 * (avg(r['old']) / avg(ref['old']) - 1):+7.2f}%"]
        if "old_group" in r:
            cells += [f"{avg(r['old_group']):8.2f}", f"{100 * (avg(r['old_group']) / avg(ref['old_group']) - 1):+7.2f}%"]
        else:
            cells += [f"{'-':>8}", f"{'-':>8}"]
        lines.append(f"{name:<14} " + " ".join(cells))
    lines.append("averages over the new / the originally trained languages; learned = the router decides, "
                 "->new e / ->own e = routed to the new expert / to the language's own group expert")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
