"""
The whole DMoE ("Group then Scale") method, one command. Read main() top to bottom: it is the method.

    python train.py --langs 18                                # the default run, every stage
    python train.py --langs 18 --preset tiny --out out-tiny   # a smoke run of every stage, seconds
    python adapt.py --adapt be,sr --from out/dmoe.pt          # then: add new languages (adapt.py)

    text -> tokens -> dense base -> profile -> groups -> upcycle -> stage 1 -> stage 2 -> table

Every stage is written to OUT/ and skipped when done; a killed run continues where it stopped.
docs/METHOD.md explains each step with the paper's numbers and where this code departs from it.

Settings are the module-level defaults below; a preset overrides them and `--key value` (or
`--key=value`) overrides both. A value must parse to the default's type; unknown keys are an error,
and every setting is checked before any work starts.
"""
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

import data
import group
from common import Env, data_fingerprint, save_json, stale_data
from config import (PRESETS, RunDir, check_profile_langs, check_settings, default_data_cache, parse_args,
                    refuse_another_runs_cache, resolve_base_langs, resolve_groups, trained_on)
from eval import evaluate, report
from model import GPT, GPTConfig, adam_by_name, load_adam_by_name, load_checkpoint, model_from_checkpoint, save_checkpoint
from profile import GROUPING, profile_languages
from upcycle import upcycle, upcycle_adam

# ----------------------------------------------------------------------------------------------------
# default settings: the `default` preset, sized for the bundled 18-language corpus on a 2-core CPU
langs = "18"                 # "18", "128", an integer N, or a comma list like "ar,de,fr"
out = "out"                  # run directory: checkpoints, logs, profile.json, groups.json, results.json
data_dir = ""                # a user corpus (see corpora/bundled.py); empty = the bundled text
data_cache = ""              # tokenized corpus; empty = data.default_cache(...)
max_tokens_per_lang = 0      # read at most this many tokens of each language of --data_dir (0 = all)
vocab_size = 8192            # compact vocabulary: 256 bytes + EOT + the most frequent o200k tokens
seed = 0                     # every random choice of training: init, batches, profiling, random groups
data_seed = 0                # the train/val split of the documents (apart, so that seeds share a test set)
preset = "default"           # default | tiny | planted | gpu | gpu_large   (config.PRESETS: what each changes)
base_langs = "auto"          # the dense base's languages: all | auto | a comma list. auto, for --langs 18 on the
                             # bundled text, is the paper's situation: the 10 of BLOOM's corpus (the other 8
                             # are new after base); for any other language set, all. Every later stage: all.
# model
n_layer = 4
n_head = 2
n_embd = 64
block_size = 128
dropout = 0.0
# batches
batch_size = 16              # sequences per micro-batch
grad_accum = 1               # micro-batches per optimizer step
sample_alpha = 0.3           # language sampling p(lang) ~ n_tokens ** sample_alpha (docs/METHOD.md §1)
# dense base pretraining
base_steps = 1600
base_lr = 5e-3
# profile: parameter deviation per language (docs/METHOD.md §2)
profile_method = "gradient"  # gradient: one step's gradient on fixed text | adam: the paper's AdamW fine-tuning
profile_steps = 10           # adam: fine-tuning steps per language
profile_lr = 1e-4
profile_batch = 8            # adam: sequences per step; gradient: sequences per forward pass
profile_repeats = 2          # adam: independent runs averaged; gradient: the text cut into consecutive parts
profile_windows = 32         # gradient: windows of block_size tokens per language, spread over its text
profile_split = "parallel"   # gradient: the text it reads: parallel (the same UDHR articles in every language) | train
profile_center = False       # True: similarity of the deviations minus their mean over languages
last_layers = 2              # deviation vector = FFN deltas of the last N layers; 0 = the paper's last eighth
# group: similarity -> language groups, deviation -> MoE layers (docs/METHOD.md §3-4)
n_groups = 0                 # experts per MoE layer = number of language groups; 0 = pairs: 9 for 18 languages,
                             # 5 + 8 = 13 when the 8 new ones are alone (docs/METHOD.md §4)
new_experts = "own"          # own: a language the base never saw gets an expert of its own | grouped: it is
                             # grouped by similarity like the others (the paper's). No effect when the base saw all
group_method = "agglomerative"  # agglomerative | minmax | seed
eps = 0.0                    # a layer becomes MoE iff its normalised mean FFN deviation >= eps; 0 = every
                             # layer (the paper's 0.6 picks one of 4 here: docs/METHOD.md §3)
# after base: every variant gets stage1_steps + stage2_steps optimizer steps of the same batches
stage1_steps = 100           # routing by language group + router cross-entropy (docs/METHOD.md §6)
stage2_steps = 900           # learned top-k routing + load balancing
lr = 2e-3                    # peak lr after base, all variants alike
top_k = 2                    # experts per token in stage 2; 1 leaves the router no gradient (docs/METHOD.md §6)
router_alpha = 1.28          # weight of the router cross-entropy in stage 1 (the paper's)
router_alpha2 = 0.0          # the same in stage 2, a pull toward the group's expert (0: the paper's)
balance_coef = 0.02          # Switch load-balancing loss weight in stage 2 (the paper's)
z_coef = 0.0                 # router z-loss weight
variants = "cpt,dmoe,random"  # + all_layers (every FFN upcycled; the same as dmoe when eps = 0)
# optimizer (every stage)
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_frac = 0.03
min_lr_frac = 0.1            # cosine decays to lr * min_lr_frac
# evaluation, logs and checkpoints
resume = True                # continue unfinished stages found in --out (False: refuse to touch them)
log_interval = 1             # steps between loss / tok/s records (each waits for the GPU; GPU presets: 10)
eval_interval = 200          # steps between validation estimates in the progress log
eval_windows = 16            # held-out windows per language in the final evaluation
ckpt_interval = 100          # steps between resumable checkpoints inside a stage
# system
device = "auto"              # auto | cpu | cuda | mps
dtype = "auto"               # auto (bf16 on cuda if supported, else fp32) | float32 | bfloat16
compile = "auto"             # auto (on for cuda) | True | False
# ----------------------------------------------------------------------------------------------------

DEFAULTS = {k: v for k, v in list(globals().items())
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k.islower()}
VARIANTS = ("cpt", "dmoe", "random", "all_layers")


# ----------------------------------------------------------------------------------------------------
# one training stage: dense base, cpt, an MoE stage, or new-language adaptation. Resumable.

class Stage:
    """What a stage trains and how: its batches, routing, auxiliary losses, which parameters move."""

    def __init__(self, name, steps, peak_lr, batches, routing="learned", lang_to_expert=None,
                 router_coef=0.0, balance_coef=0.0, z_coef=0.0, freeze=None, meta=None, langs=None):
        self.name, self.steps, self.peak_lr = name, steps, peak_lr
        self.langs = langs                      # the languages its batches draw from (None: every language)
        self.batches = batches                  # batch stream: stages with the same one see the same batches
        self.routing = routing                  # "learned" top-k, or "group": sequence -> its group's expert
        self.lang_to_expert = lang_to_expert    # {lang: expert id}: the groups (needed by "group" routing)
        self.router_coef = router_coef          # weight of the router cross-entropy against the group's expert
        self.balance_coef = balance_coef        # weight of the Switch load-balancing loss
        self.z_coef = z_coef                    # weight of the router z-loss
        self.freeze = freeze                    # fn(model): freezes what must not move (None: all trains); adapt.py
        self.meta = meta or {}                  # stored in the checkpoint: variant, groups, lang_to_expert, ...

    def loss(self, lm_loss, aux):
        """The stage's objective: language modelling plus its weighted auxiliary losses."""
        loss = lm_loss
        for coef, key in ((self.router_coef, "router_ce"), (self.balance_coef, "balance"), (self.z_coef, "z")):
            if coef and key in aux:
                loss = loss + coef * aux[key]
        return loss


def batch_generator(seed, stream):
    """The random batches of one stream ("base", "stage1", "stage2", "adapt"): every variant's stage 1 draws
    the same batches, and so does every variant's stage 2, so the comparison is on identical data."""
    return torch.Generator().manual_seed(seed * 1000 + sum(map(ord, stream)))


def lr_at(step, steps, peak, cfg):
    """Linear warmup over warmup_frac of the steps, then cosine down to peak * min_lr_frac."""
    warm = max(1, int(cfg["warmup_frac"] * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (cfg["min_lr_frac"] + (1 - cfg["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def checkpoint_or_exit(path):
    """load_checkpoint, with a missing or unreadable file as a one-line error instead of a traceback."""
    try:
        return load_checkpoint(path)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}")


def train_stage(cfg, env, dataset, stage, model, adam=None):
    """Train `model` for stage.steps and save it as OUT/<stage.name>.pt; AdamW starts from `adam` (the
    state a previous stage ended with, {param name: state}; None = fresh). Returns (model, its AdamW state).
    If OUT/<stage.name>.pt is a finished stage, return that instead; if a killed run left it unfinished,
    continue it (and not `model`). Under DDP every rank draws the same global batch and trains on its own
    slice of it, so the update is a single process's with that global batch; only rank 0 logs and writes
    (every rank waits for its checkpoints)."""
    path = os.path.join(cfg["out"], stage.name + ".pt")
    ckpt = checkpoint_or_exit(path) if os.path.exists(path) else None
    if ckpt is not None and not ckpt.get("done") and not cfg["resume"]:
        raise SystemExit(f"error: {path} holds an unfinished stage; run with --resume True to continue it "
                         f"or pass another --out")
    why = stale_data(ckpt, dataset) if ckpt is not None else None
    if why:
        raise SystemExit(f"error: {path} {why}; pass another --out to train on the new tokens, or restore "
                         f"the corpus and vocabulary it was trained on")
    sampled = stage.langs or dataset.langs
    had = ckpt.get("sampled_langs", ckpt["langs"]) if ckpt is not None else sampled
    if had != sampled:   # e.g. a base of every language, now asked for --base_langs auto
        raise SystemExit(f"error: {path} was trained on {','.join(had)}, not {','.join(sampled)}; pass another "
                         f"--out, or the --base_langs it was trained with")
    model = model_from_checkpoint(ckpt, env.device) if ckpt else model.to(env.device)
    if stage.freeze is not None:
        stage.freeze(model)
    wd = cfg["weight_decay"] if stage.freeze is None else 0.0   # adaptation: nothing decays
    optimizer = model.configure_optimizers(wd, stage.peak_lr, (cfg["beta1"], cfg["beta2"]), env.device_type)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    elif adam is not None:
        load_adam_by_name(model, optimizer, adam)
    if ckpt is not None and ckpt.get("done"):
        env.print(f"[{stage.name}] done already ({path}), skipping")
        return model, adam_by_name(model, optimizer)
    gen = batch_generator(cfg["seed"], stage.batches)
    step = 0
    log = TrainLog(cfg, env, stage, model, dataset)
    if ckpt:
        gen.set_state(ckpt["rng"])
        step = ckpt["step"]
        env.print(f"[{stage.name}] resuming from step {step}/{stage.steps} ({path})")
    log.open(resume_step=step if ckpt else None)
    fwd = torch.compile(model, dynamic=False) if env.use_compile else model
    if env.ddp:
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[env.device] if env.device_type == "cuda" else None)

    B, T, accum = cfg["batch_size"], cfg["block_size"], cfg["grad_accum"]   # B splits over the ranks (Env)
    mine = slice(env.rank * B // env.world, (env.rank + 1) * B // env.world)
    probs = dataset.sampling_probs(cfg["sample_alpha"])
    if stage.langs is not None:   # a stage on some of the languages (the base): p over those, renormalised
        kept = sum(probs[l] for l in stage.langs)
        probs = {l: probs[l] / kept for l in stage.langs}
    to_expert = None
    if stage.lang_to_expert is not None:
        to_expert = torch.tensor([stage.lang_to_expert[l] for l in dataset.langs], device=env.device)
    first_bad = torch.tensor(-1, device=env.device)   # first step whose loss was not finite (checked lazily)

    def save(done):
        stop_if_diverged()
        if not all(torch.isfinite(p).all() for p in model.parameters()):   # a checkpoint never holds NaN
            raise SystemExit(f"error: [{stage.name}] the weights are not finite after step {step}; "
                             f"{kept()}; lower the learning rate")
        if env.master:
            save_checkpoint(path, {
                "model": model.state_dict(), "model_args": model.config.__dict__.copy(),
                "optimizer": optimizer.state_dict(), "rng": gen.get_state(), "step": step, "done": done,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(env.device) if cuda else None,
                "stage": stage.name, "config": cfg, "vocab": dataset.tokenizer.state_dict(),
                "data_fingerprint": data_fingerprint(dataset),
                "langs": dataset.langs, "sampled_langs": sampled, "groups": stage.meta.get("groups"),
                "lang_to_expert": stage.meta.get("lang_to_expert"), "meta": stage.meta})
        env.barrier()

    def kept():
        return f"{path} (step {ckpt_step}) is kept" if ckpt_step else "nothing was saved"

    def stop_if_diverged():   # a .item(): waits for the device, so only where we sync anyway
        if first_bad.item() >= 0:
            raise SystemExit(f"error: [{stage.name}] the loss (or its gradient) is not finite at step "
                             f"{first_bad.item() + 1}; {kept()}; lower the learning rate (--{'base_lr' if stage.name == 'base' else 'adapt_lr' if stage.batches == 'adapt' else 'lr'})")

    ckpt_step = step
    model.train()
    # dropout draws from torch's global generators: each stage gets its own, seeded from --seed and the
    # stage's name (restored on resume), so a killed run resumes exactly and no stage's draws move another's
    cuda = [env.device] if env.device_type == "cuda" else []
    rng_scope = torch.random.fork_rng(devices=cuda)
    rng_scope.__enter__()
    if ckpt and "torch_rng" in ckpt:
        torch.set_rng_state(ckpt["torch_rng"])
        if cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], env.device)
    else:
        torch.manual_seed(cfg["seed"] * 1000 + sum(map(ord, stage.name)) + 7)
    try:   # the progress bar, the log and the generators' scope are closed however the stage ends
        while step < stage.steps:
            lr_now = lr_at(step, stage.steps, stage.peak_lr, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr_now
            for micro in range(accum):
                x, y, li = dataset.mixed_batch("train", B, T, probs, gen, env.device)   # the global batch
                x, y, li = x[mine], y[mine], li[mine]                                  # this rank's share
                expert_ids = to_expert[li] if to_expert is not None else None
                if env.ddp:   # average gradients across ranks on the last micro-batch only
                    fwd.require_backward_grad_sync = micro == accum - 1
                with env.autocast():
                    _, lm_loss, aux = fwd(x, y, expert_ids=expert_ids, routing=stage.routing)
                loss = stage.loss(lm_loss, aux)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
                (loss / accum).backward()
            if cfg["grad_clip"] > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(norm), step, first_bad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            checkpoint = step % cfg["ckpt_interval"] == 0 and step < stage.steps
            if log.due(step) or checkpoint:
                stop_if_diverged()
                log.record(step, lr_now, lm_loss, aux)
            if checkpoint:   # on every rank: save() ends in a barrier
                save(done=False)
                ckpt_step = step
        save(done=True)
    finally:
        log.close()
        rng_scope.__exit__(None, None, None)
    return model, adam_by_name(model, optimizer)


class TrainLog:
    """OUT/logs/<stage>.jsonl (one JSON record per logged step), the progress bar, tokens/s and MFU, and the
    validation estimate every eval_interval steps. Rank 0 only. A stage that starts over rewrites its log; a
    resumed one keeps the records up to its checkpoint."""

    def __init__(self, cfg, env, stage, model, dataset):
        self.cfg, self.env, self.stage, self.model, self.dataset = cfg, env, stage, model, dataset
        self.path = os.path.join(cfg["out"], "logs", stage.name + ".jsonl")
        self.tokens_per_step = cfg["batch_size"] * cfg["block_size"] * cfg["grad_accum"]
        self.fpt = model.flops_per_token(stage.routing)
        self.file = self.bar = None

    def open(self, resume_step=None):
        if not self.env.master:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        keep = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                keep = [l for l in f if l.strip() and json.loads(l)["step"] <= resume_step]
        self.file = open(self.path, "w")
        self.file.writelines(keep)
        self.first_step = resume_step or 0
        self.bar = tqdm(total=self.stage.steps, initial=self.first_step, desc=self.stage.name, dynamic_ncols=True,
                        mininterval=0.5)
        self.t0, self.timed_from = time.time(), None

    def due(self, step):
        """Whether this step is recorded; also ticks the progress bar (rank 0)."""
        if not self.env.master:
            return False
        self.bar.update(1)
        if self.timed_from is None:   # tokens/s (and MFU) leave out this run's first step: it compiles
            self.timed_from = time.time()
            self.first_timed = step
        return step % self.cfg["log_interval"] == 0 or self.evaluate_now(step) or step == self.stage.steps

    def evaluate_now(self, step):
        return step % self.cfg["eval_interval"] == 0 or step == self.stage.steps

    def record(self, step, lr_now, lm_loss, aux):
        if not self.env.master:
            return
        timed = step - self.first_timed
        now = time.time()
        tps = self.tokens_per_step * timed / (now - self.timed_from) if timed else self.tokens_per_step / (now - self.t0)
        rec = {"step": step, "tokens": step * self.tokens_per_step, "loss": round(lm_loss.item(), 4), "lr": lr_now}
        for k in ("router_ce", "balance"):
            if k in aux:
                rec[k] = round(aux[k].item(), 4)
        post = dict(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr_now:.1e}")
        if self.env.peak_flops:
            rec["mfu"] = round(100 * self.fpt * tps / (self.env.peak_flops * self.env.world), 2)
            post["mfu"] = f"{rec['mfu']:.1f}%"
        self.bar.set_postfix(post, refresh=False)
        if self.evaluate_now(step):
            st = self.stage
            res = evaluate(self.model, self.dataset, self.dataset.langs, split="val",
                           block_size=self.cfg["block_size"], max_windows=2, routing=st.routing,
                           lang_to_expert=st.lang_to_expert, device=self.env.device)
            rec["val_loss"] = round(sum(r["loss"] for r in res.values()) / len(res), 4)
            self.model.train()
            self.bar.write(f"[{st.name}] step {step:5d}/{st.steps} | loss {rec['loss']:.3f} | "
                           f"val {rec['val_loss']:.3f} | lr {lr_now:.1e} | tok/s {tps:,.0f}"
                           + (f" | mfu {rec['mfu']:.1f}%" if "mfu" in rec else ""))
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def close(self):
        if self.env.master and not self.file.closed:
            self.bar.close()
            self.file.close()


# ----------------------------------------------------------------------------------------------------
# the method, top to bottom

def main(argv):
    if any(a.split("=")[0] in ("--adapt", "--from", "--adapt_from") for a in argv):
        raise SystemExit("error: adding languages is its own command: python adapt.py --adapt be,sr --from out/dmoe.pt")
    cfg = parse_args(argv, DEFAULTS, PRESETS, doc=__doc__)
    if cfg["data_dir"] == "planted":       # the synthetic world where the right groups are known, one per seed
        from corpora import planted
        cfg["data_dir"] = planted.write(os.path.join("data_cache", f"planted-{cfg['seed']}"), cfg["seed"])
    cfg["data_cache"] = cfg["data_cache"] or default_data_cache(cfg)
    lang_list = check_settings(cfg, VARIANTS)   # every refusal happens here, before any work
    base_langs = resolve_base_langs(cfg, lang_list)
    alone, n_groups = resolve_groups(cfg, lang_list, base_langs)   # --new_experts own: the new languages alone
    env = Env(cfg)
    run = RunDir(cfg).open() if env.master else None   # a lock; refuses a folder holding other settings
    check_profile_langs(cfg, lang_list)
    torch.manual_seed(cfg["seed"])
    t_start = time.time()
    env.print(f"nanoDMoE | preset {cfg['preset']} | device {env.device} x{env.world} | {env.dtype} | "
              f"compile {env.use_compile} | out {cfg['out']}/")

    # 1. text -> tokens: the bundled corpus (or --data_dir), a compact o200k vocabulary, token files
    dataset = load_data(cfg, env, lang_list)
    if env.master:
        run.write_config()

    # 2. the dense base model, pretrained on --base_langs (p(lang) ~ n_tokens^0.3); with auto and --langs 18,
    #    the 10 that BLOOM, the paper's base, was pretrained on: the other 8 are new to it, as in the paper
    mcfg = GPTConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                     n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"], top_k=cfg["top_k"])
    torch.manual_seed(cfg["seed"])
    seen = None if base_langs == lang_list else base_langs
    base, base_adam = train_stage(cfg, env, dataset, Stage("base", cfg["base_steps"], cfg["base_lr"], "base",
                                                           langs=seen), GPT(mcfg))

    # 3. profile (§2): each language fine-tunes a copy of base alone; how far does each weight move?
    prof = profile(cfg, env, base, dataset, lang_list, alone)

    # 4. group (§3-4): languages whose deviations point the same way share a group, one expert per
    #    group; the layers whose FFN moves most become MoE layers (the default eps 0: every layer).
    #    A language the base never saw has no kinship to measure yet (its deviation says "unknown"): under
    #    --new_experts own it gets an expert of its own, and the seen ones go in pairs (docs/METHOD.md §4)
    grp = group.make_groups(prof, n_groups, cfg["group_method"], cfg["eps"], seed=cfg["seed"], alone=alone)
    groups, moe_layers = grp["groups"], grp["moe_layers"]
    if env.master:
        save_json(grp, os.path.join(cfg["out"], "groups.json"))
        print(group.describe(grp) + f"\n(heatmap and per-layer bars: python analysis/console.py {cfg['out']})")

    # 5. the variants, each trained for stage1_steps + stage2_steps on the same batches after base.
    #    What each one is, in one line (language groups, MoE layers):
    variants = {
        "cpt": None,                                                  # dense continual pre-training
        "dmoe": (groups, moe_layers),                                 # the method
        "random": (group.random_groups(lang_list, [len(g) for g in groups], seed=cfg["seed"]),
                   moe_layers),                                       # groups that ignore similarity
        "all_layers": (groups, list(range(cfg["n_layer"]))),          # every FFN upcycled (Branch-Train-MiX)
    }
    wanted = [v.strip() for v in cfg["variants"].split(",") if v.strip()]
    for name in wanted:
        if variants[name] is None:
            # the dense model on exactly the batches and schedules the MoE variants get (stage 1, then
            # stage 2, each its own warmup + cosine), so that every difference is the MoE's doing. Every
            # stage continues the previous one's AdamW state (docs/METHOD.md §9)
            cpt, adam = train_stage(cfg, env, dataset, Stage("cpt_stage1", cfg["stage1_steps"], cfg["lr"], "stage1"),
                                    copy_of(base), base_adam)
            train_stage(cfg, env, dataset, Stage("cpt", cfg["stage2_steps"], cfg["lr"], "stage2"), cpt, adam)
            continue
        lang_groups, layers = variants[name]
        lang_to_expert = {l: e for e, g in enumerate(lang_groups) for l in g}
        meta = {"variant": name, "groups": lang_groups, "lang_to_expert": lang_to_expert, "moe_layers": layers}
        # upcycle (§5): each chosen FFN becomes one expert per group, all exact copies; a fresh router
        moe = upcycle(base, layers, len(lang_groups), top_k=cfg["top_k"], seed=cfg["seed"])
        adam = upcycle_adam(base_adam, layers, len(lang_groups))
        # stage 1 (§6): every token goes to its language group's expert, and the router learns to send it
        # there: loss = LM + router_alpha * CE(router logits, group expert)
        moe, adam = train_stage(cfg, env, dataset, Stage(
            f"{name}_stage1", cfg["stage1_steps"], cfg["lr"], "stage1", routing="group",
            lang_to_expert=lang_to_expert, router_coef=cfg["router_alpha"], meta=meta), moe, adam)
        # stage 2 (§6): the router decides (top-k of its softmax): loss = LM + balance_coef * load balance
        # (+ router_alpha2 * the stage-1 router loss, when set)
        train_stage(cfg, env, dataset, Stage(
            name, cfg["stage2_steps"], cfg["lr"], "stage2", routing="learned",
            lang_to_expert=lang_to_expert if cfg["router_alpha2"] else None, router_coef=cfg["router_alpha2"],
            balance_coef=cfg["balance_coef"], z_coef=cfg["z_coef"], meta=meta), moe, adam)
    env.barrier()

    # 6. evaluate (§8): every variant on held-out text, per language -> the table and OUT/results.json
    if env.master:
        return report(cfg, env, dataset, lang_list, base_langs, ["base"] + wanted, grp, variants["random"][0],
                      t_start, order=("base",) + VARIANTS)
    return None


def load_data(cfg, env, lang_list, cache=None, tokenizer=None):
    """Tokenize (rank 0 first; the others then reuse its cache) and check that every language fits a block."""
    cache = cache or cfg["data_cache"]
    if tokenizer is None:
        refuse_another_runs_cache(cfg, cache, lang_list)
    try:
        if env.master:   # the prepare step (corpora/prepare.py): text -> token files, once; then reused
            from corpora.prepare import prepare
            dataset = prepare(lang_list, cache, vocab_size=cfg["vocab_size"], data_dir=cfg["data_dir"] or None,
                              seed=cfg["data_seed"], tokenizer=tokenizer, max_tokens_per_lang=cfg["max_tokens_per_lang"],
                              keep=trained_on(cfg["out"]), rebuild=False)
        env.barrier()
        if not env.master:
            dataset = data.Dataset.load(cache)
        for l in lang_list:   # fail now, not an hour in, if a language is too short for the block
            for split in ("train", "val"):
                dataset.eval_windows(l, split, cfg["block_size"], 1)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    return dataset


def copy_of(model):
    """A fresh copy of a trained model (base stays as it is for the next variant)."""
    return model_from_checkpoint({"model": model.state_dict(), "model_args": model.config.__dict__}, model.lm_head.weight.device)


def profile(cfg, env, base, dataset, lang_list, alone):
    """OUT/profile.json: the per-language, per-layer parameter deviations and the similarity (profile.py),
    with the run's grouping settings, so that `python group.py OUT/profile.json` makes OUT/groups.json."""
    path = os.path.join(cfg["out"], "profile.json")
    grouping = dict({k: cfg[k] for k in GROUPING}, alone=alone)
    if os.path.exists(path):
        with open(path) as f:
            prof = json.load(f)
        why = stale_data(prof, dataset)
        if why:
            raise SystemExit(f"error: {path} {why}; pass another --out, or delete it and the run's .pt files")
        env.print(f"[profile] done already ({path}), skipping")
        if prof.get("grouping") != grouping and env.master:   # a profile shared between runs: group.py's
            prof["grouping"] = grouping                        # defaults are this run's
            save_json(prof, path)
        return prof
    try:
        prof = profile_languages(base, dataset, lang_list, method=cfg["profile_method"], steps=cfg["profile_steps"],
                                 lr=cfg["profile_lr"], batch_size=cfg["profile_batch"], block_size=cfg["block_size"],
                                 last_layers=cfg["last_layers"] or None, repeats=cfg["profile_repeats"],
                                 windows=cfg["profile_windows"], center=cfg["profile_center"],
                                 split=cfg["profile_split"], seed=cfg["seed"],
                                 device=env.device, progress=env.master, rank=env.rank, world=env.world)
    except FloatingPointError as e:
        raise SystemExit(f"error: [profile] {e}; lower --profile_lr")
    prof.pop("vectors")
    prof["data_fingerprint"] = data_fingerprint(dataset)
    prof["grouping"] = grouping
    if env.master:
        save_json(prof, path)
    return prof


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:   # Ctrl-C: the last checkpoint of every stage is kept
        raise SystemExit("\ninterrupted: run the same command again to resume from the last checkpoint")
