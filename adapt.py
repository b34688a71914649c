"""
New-language adaptation (docs/METHOD.md §7): give a trained DMoE model languages it never saw.

    python adapt.py --adapt be,sr --from out/dmoe.pt

1. Which existing expert is closest to the new languages? Their perplexity with every MoE layer forced
   to expert e, for each e, on their training text (the held-out text is what the report scores); the
   lowest wins.
2. Add one expert (in every MoE layer): a copy of that expert's FFN and of its router row (upcycle.add_expert).
3. Train it on the new languages, routed to the new expert, in one of these ways (same batches, --adapt_lr):
   similar      the paper's: every MoE weight (experts and routers) trains, with the router loss;
   keep_out     only the new expert trains (a gradient mask), routed to by a new router row that is fitted
                once and then kept fixed: a margin classifier on the router input and its mean over the
                token's prefix (what the text so far says), new-language tokens ranking the new expert
                first, old-language tokens (as the source model runs them, every old language counting
                alike, all of them --adapt_old_weight times the new ones) keeping it below their k-th
                choice. An old token whose margin holds keeps its experts and weights exactly;
   cpt          the baseline: the dense `cpt` model of the same run fine-tuned whole.
   (ablations/adapt_methods.py adds three steps between the two: dissimilar, new_only, new_only_replay.)
The report: each method's new-language perplexity and how much the old languages' perplexity moved,
under learned routing (the model as it runs) and routed to their own group's expert.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import data
import train
from common import Env, find_data_cache, save_json, stale_data
from config import PRESETS, RunDir, check_settings, parse_args
from eval import evaluate, summarize
from model import model_from_checkpoint, prefix_mean
from tokenizer import Tokenizer
from upcycle import add_expert

# ----------------------------------------------------------------------------------------------------
# settings: train.py's (the source run's model settings are taken from its checkpoint) and these
adapt = ""                   # comma list of new languages (required)
adapt_from = ""              # the trained MoE checkpoint to extend (alias: --from; required)
adapt_steps = 100
adapt_lr = 2e-4
adapt_replay = 0.25          # ablations/adapt_methods.py new_only_replay: share of old-language sequences
adapt_margin = 1.0           # keep_out: router-logit margin that keeps old tokens off the new expert
adapt_old_weight = 4.0       # keep_out: weight of the old tokens' margins against the new tokens' in the fit
adapt_methods = "similar,keep_out,cpt"   # which to run (ablations/adapt_methods.py adds three more)
DEFAULTS = dict(train.DEFAULTS, **{k: v for k, v in list(globals().items()) if k.startswith("adapt")})
ALIASES = {"from": "adapt_from"}
# ----------------------------------------------------------------------------------------------------

# the settings that decide an adaptation's checkpoints: another value needs another --out
KEYS = ("adapt", "adapt_from", "adapt_steps", "adapt_lr", "adapt_replay", "adapt_margin", "adapt_old_weight", "router_alpha", "seed", "batch_size", "grad_accum",
        "data_dir", "data_cache", "max_tokens_per_lang", "data_seed", "weight_decay", "beta1", "beta2", "grad_clip",
        "warmup_frac", "min_lr_frac", "sample_alpha", "dtype")


def expert_affinity(model, data, langs, split="val", block_size=None, max_windows=16, device=None, batch_size=16):
    """Step 1. (n_langs, E) perplexity of each language with every MoE layer forced to expert e (docs/METHOD.md
    §7: the argmin is the most similar expert, the one a new language's expert is copied from)."""
    if not model.config.moe_layers:
        raise ValueError("expert_affinity needs an MoE model (this one is dense)")
    aff = np.zeros((len(langs), model.config.n_experts))
    for e in range(aff.shape[1]):
        res = evaluate(model, data, langs, split=split, block_size=block_size, max_windows=max_windows,
                       force_expert=e, device=device, batch_size=batch_size)
        aff[:, e] = [res[l]["ppl"] for l in langs]
    return aff


def moe_only(model):
    """The paper's: freeze everything but the MoE layers (routers + experts)."""
    prefixes = tuple(f"transformer.h.{l}.ffn." for l in model.config.moe_layers)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(prefixes)


def new_expert_only(model, router=True):
    """Freeze everything but the newest expert (and its router row, if router): the stacked expert tensors
    and the router keep their other rows through a gradient mask (zero gradient, no weight decay: AdamW
    leaves them exactly as they were)."""
    new = model.config.n_experts - 1
    for p in model.parameters():
        p.requires_grad = False
    for moe in model.moe_modules():
        for p in (moe.w_fc, moe.b_fc, moe.w_proj, moe.b_proj) + ((moe.router.weight,) if router else ()):
            if p is not None:
                p.requires_grad = True
                mask = torch.zeros_like(p)
                mask[new] = 1.0
                p.register_hook(lambda g, mask=mask: g * mask)


def new_expert_alone(model):
    """keep_out's: only the newest expert trains; its router rows keep the fitted values."""
    new_expert_only(model, router=False)


def add_context_router(model):
    """Give every MoE router a context part (model.MoE.router_context), all zero: the old experts' logits
    stay exactly what they were, and keep_out can fit the new expert's row to what the text so far says."""
    for moe in model.moe_modules():
        if moe.router_context is None:   # (a model adapted before keeps its context rows)
            moe.router_context = torch.nn.Linear(moe.router.in_features, moe.n_experts, bias=False,
                                                 device=moe.router.weight.device)
            torch.nn.init.zeros_(moe.router_context.weight)
    model.config.router_context = True


@torch.no_grad()
def router_inputs(model, source, new_data, old_data, l2e, batches, batch_size, block_size, seed):
    """The inputs of every MoE layer's router that keep_out's new row is fitted on, per MoE layer
    (x_new (B, T, C), x_old (B', T, C), lang_old (B' * T,) int64 index into old_data.langs), float32:
    new-language sequences as they train (the extended model, routed to the new expert), old-language
    sequences as they run (the source model, learned routing: an old token kept off the new expert in
    every layer gives every later layer the same input as before)."""
    model.eval(), source.eval()   # no dropout: the inputs as the models run
    seen = {m: [[] for _ in m.moe_modules()] for m in (model, source)}
    hooks = [moe.register_forward_pre_hook(lambda mod, args, s=s: s.append(args[0].float()))
             for m in (model, source) for moe, s in zip(m.moe_modules(), seen[m])]
    gen, device = torch.Generator().manual_seed(seed), next(model.parameters()).device
    new_e, old_langs = torch.tensor([l2e[l] for l in new_data.langs]), []
    new_probs, old_probs = new_data.sampling_probs(0.3), old_data.sampling_probs(0.3)
    try:
        for _ in range(batches):
            x, _, li = new_data.mixed_batch("train", batch_size, block_size, new_probs, gen, device)
            model(x, expert_ids=new_e[li.cpu()].to(device), routing="group")
            x, _, li = old_data.mixed_batch("train", batch_size, block_size, old_probs, gen, device)
            source(x, routing="learned")
            old_langs.append(li.cpu().repeat_interleave(block_size))
    finally:
        for h in hooks:
            h.remove()
    return [(torch.cat(n), torch.cat(o), torch.cat(old_langs)) for n, o in zip(seen[model], seen[source])]


def fit_new_router_rows(model, inputs, top_k, margin, old_weight=4.0, steps=1000, lr=1e-2):
    """Fit the new expert's router row, and its context row (add_context_router), in every MoE layer as
    a margin classifier on router_inputs; z_new = row . x_t + context row . (mean of x over the prefix):
        new tokens:  relu(max_old z - z_new + margin)      old tokens:  relu(z_new - z_(k) + margin)
    with z_(k) the k-th largest of the old experts' logits; each old language weighs alike (a rare one
    would otherwise be given up), and the old tokens together old_weight times the new ones (where the
    two cannot both hold, keeping old tokens out matters more). The old rows are fixed, so an old token
    whose margin holds keeps its top-k, and its weights, exactly. Returns the final hinge per layer."""
    out = []
    for moe, (x_new, x_old, lang) in zip(model.moe_modules(), inputs):
        W, C = moe.router.weight.detach(), moe.router.in_features
        new = W.shape[0] - 1
        x_new, x_old, lang = x_new.to(W.device), x_old.to(W.device), lang.to(W.device)
        f_new, f_old = (torch.cat([x, prefix_mean(x)], -1).reshape(-1, 2 * C) for x in (x_new, x_old))
        Wc = moe.router_context.weight.detach()[:new].float()

        def old_logits(f):
            # (rows, new) the old experts' logits; their context rows are zero unless this model was adapted before
            z = f[:, :C] @ W[:new].float().T
            return z + f[:, C:] @ Wc.T if Wc.any() else z

        first = old_logits(f_new).max(dim=-1).values                                     # (N,) best old logit
        kth = old_logits(f_old).topk(min(top_k, new), dim=-1).values[:, -1]              # (M,) k-th
        weight = 1.0 / torch.bincount(lang)[lang].float()
        weight = weight / weight.sum()                                                   # every old language alike
        w = torch.cat([W[new].float(), moe.router_context.weight[new].detach().float()]).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            loss = (F.relu(first - f_new @ w + margin).mean()
                    + old_weight * (F.relu(f_old @ w - kth + margin) * weight).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        moe.router.weight.data[new] = w.detach()[:C].to(W.dtype)
        moe.router_context.weight.data[new] = w.detach()[C:].to(W.dtype)
        out.append(float(loss.detach()))
    return out


class WithReplay:
    """The new languages' data plus a share of the old languages' text, as one dataset for train_stage.
    Old sequences go to their own (frozen) group experts, so they train nothing but the router loss of
    the new router row: a token of an old language learns not to choose the new expert."""

    def __init__(self, new, old, share):
        self.new, self.old, self.share = new, old, share
        self.langs, self.tokenizer = new.langs + old.langs, new.tokenizer

    def _of(self, lang):
        return self.new if lang in self.new.langs else self.old

    def sampling_probs(self, alpha):
        new, old = self.new.sampling_probs(alpha), self.old.sampling_probs(alpha)
        return {**{l: p * (1 - self.share) for l, p in new.items()}, **{l: p * self.share for l, p in old.items()}}

    def get_batch(self, split, lang, *args, **kw):
        return self._of(lang).get_batch(split, lang, *args, **kw)

    def eval_windows(self, lang, *args, **kw):
        return self._of(lang).eval_windows(lang, *args, **kw)

    mixed_batch = data.Dataset.mixed_batch   # draws through self.langs, self.get_batch


METHODS = ("similar", "keep_out", "cpt")


def new_language_cache(langs_spec, vocab_size, data_seed, data_dir, run_dir):
    """The default cache of the new languages' tokens: data.default_cache's name + the source run's
    folder, since they are tokenized with that run's vocabulary."""
    return data.default_cache(langs_spec, vocab_size, data_seed, data_dir) + "-vocab-of-" + os.path.basename(run_dir)


def check_adapt_settings(cfg, methods):
    """adapt.py's own settings, one line each, before any work (train.py's are check_settings')."""
    def need(ok, msg):
        if not ok:
            raise SystemExit(f"error: {msg}")
    need(cfg["adapt_steps"] >= 1, f"--adapt_steps must be at least 1, got {cfg['adapt_steps']}")
    need(math.isfinite(cfg["adapt_lr"]) and cfg["adapt_lr"] > 0, f"--adapt_lr must be a positive number, got {cfg['adapt_lr']}")
    need(math.isfinite(cfg["adapt_margin"]) and cfg["adapt_margin"] >= 0, f"--adapt_margin must be 0 or more, got {cfg['adapt_margin']}")
    need(math.isfinite(cfg["adapt_old_weight"]) and cfg["adapt_old_weight"] > 0,
         f"--adapt_old_weight must be a positive number, got {cfg['adapt_old_weight']}")
    need(0 <= cfg["adapt_replay"] < 1, f"--adapt_replay must be in [0, 1), got {cfg['adapt_replay']}")
    need(cfg["adapt"].strip(), "--adapt needs the new languages, e.g. --adapt be,sr")
    wanted = [m.strip() for m in cfg["adapt_methods"].split(",") if m.strip()]
    need(wanted and not set(wanted) - set(methods), f"--adapt_methods {cfg['adapt_methods']!r}: choose from {','.join(methods)}")
    return wanted


def main(argv, extra_methods=None):
    """Adapt --from (a trained MoE checkpoint) to the languages --adapt. Returns the report. extra_methods:
    {name: fn(new_expert, best, worst, cfg) -> the adapted model}, run after the paper's (an ablation's
    methods, ablations/adapt_methods.py)."""
    extra_methods = extra_methods or {}
    cfg = parse_args(argv, DEFAULTS, PRESETS, ALIASES, __doc__, prog="adapt.py")
    check_settings(cfg, train.VARIANTS, pipeline=False)
    wanted = check_adapt_settings(cfg, METHODS[:-1] + tuple(extra_methods) + METHODS[-1:])
    if not cfg["adapt_from"]:
        raise SystemExit("error: --adapt needs --from CKPT, a trained MoE checkpoint such as out/dmoe.pt")
    src = train.checkpoint_or_exit(cfg["adapt_from"])
    if not src["model_args"].get("moe_layers"):
        raise SystemExit(f"error: {cfg['adapt_from']} is a dense checkpoint; --from needs an MoE one (e.g. out/dmoe.pt)")
    lacking = [k for k in ("config", "langs", "vocab", "groups", "lang_to_expert") if not src.get(k)]
    if lacking or src.get("stage") == "upcycled":
        lacking = lacking or ["training"]
        raise SystemExit(f"error: {cfg['adapt_from']} has no {', '.join(lacking)} (an upcycle.py output is not "
                         f"trained yet); --from needs an MoE checkpoint that train.py finished, e.g. out/dmoe.pt")
    if not src.get("done"):
        raise SystemExit(f"error: {cfg['adapt_from']} is an unfinished stage (step {src.get('step')}); run its "
                         f"train.py command again to finish it, then adapt")
    old_cfg, old_langs = src["config"], src["langs"]
    new_langs = [l.strip() for l in cfg["adapt"].split(",") if l.strip()]
    already = [l for l in new_langs if l in old_langs]
    if already:
        raise SystemExit(f"error: {','.join(already)} already trained in {cfg['adapt_from']}; --adapt takes new "
                         f"languages (trained: {','.join(old_langs)})")
    try:
        from corpora.bundled import resolve_langs   # the prepare step's: which languages have text
        new_langs = resolve_langs(",".join(new_langs), cfg["data_dir"] or None)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    run_dir = os.path.dirname(os.path.abspath(cfg["adapt_from"]))
    variant = os.path.splitext(os.path.basename(cfg["adapt_from"]))[0]
    # the old languages' tokens: the ones the source model was trained on, or a one-line refusal
    old_cache = find_data_cache(src, cfg["adapt_from"])
    try:
        old_data = data.Dataset.load(old_cache)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {cfg['adapt_from']}'s data cache: {e}")
    why = stale_data(src, old_data)
    if why:
        raise SystemExit(f"error: {cfg['adapt_from']} {why}; restore the data cache it was trained on ({old_cache})")
    cpt_path = os.path.join(run_dir, "cpt.pt")
    cpt_src = train.checkpoint_or_exit(cpt_path) if "cpt" in wanted and os.path.exists(cpt_path) else None
    if cpt_src is not None and not cpt_src.get("done"):
        raise SystemExit(f"error: {cpt_path} is an unfinished stage (the dense baseline); finish its train.py run, "
                         f"or leave cpt out of --adapt_methods")
    if not any(a == "--out" or a.startswith("--out=") for a in argv):   # one folder per new languages and source model
        cfg["out"] = os.path.join(run_dir, f"adapt-{'_'.join(new_langs)}-from-{variant}")
    cfg["adapt_from"] = os.path.abspath(cfg["adapt_from"])
    for k in ("block_size", "vocab_size", "top_k"):
        cfg[k] = old_cfg[k]
    cfg["data_cache"] = cfg["data_cache"] or new_language_cache(cfg["adapt"], cfg["vocab_size"], cfg["data_seed"],
                                                                cfg["data_dir"] or None, run_dir)
    env = Env(cfg)
    run = RunDir(cfg, keys=KEYS).open() if env.master else None
    new_data = train.load_data(cfg, env, new_langs, tokenizer=Tokenizer.from_state_dict(src["vocab"]))
    if env.master:
        run.write_config()
    model = model_from_checkpoint(src, env.device)
    old_l2e = src["lang_to_expert"]

    # 1. the closest expert: perplexity of the new languages with every MoE layer forced to e, on their
    #    training text (choosing on the held-out text would select on what the report scores)
    aff = expert_affinity(model, new_data, new_langs, split="train", block_size=cfg["block_size"],
                          max_windows=cfg["eval_windows"])
    mean_aff = np.exp(np.log(aff).mean(axis=0))      # (E,) geometric mean ppl over the new languages
    best, worst = int(mean_aff.argmin()), int(mean_aff.argmax())
    env.print(f"[adapt] expert affinity (ppl of {','.join(new_langs)} with every MoE layer forced to e, training text): "
              + "  ".join(f"e{e} {p:.1f}" for e, p in enumerate(mean_aff))
              + f"  -> copy e{best} (least similar: e{worst})")

    # 2. + 3. one new expert, copied from `copy_from`, trained on the new languages routed to it
    new_e = model.config.n_experts
    l2e = dict(old_l2e, **{l: new_e for l in new_langs})
    meta = {"variant": "adapt", "groups": src["groups"] + [new_langs], "lang_to_expert": l2e,
            "moe_layers": model.config.moe_layers}

    def new_expert(name, copy_from, freeze, replay=0.0, fit_row=False):
        m = model_from_checkpoint(src, env.device)
        add_expert(m, copy_from)
        path = os.path.join(cfg["out"], f"adapt_{name}.pt")
        if fit_row:
            add_context_router(m)
            if not os.path.exists(path):
                # the new router row: a margin classifier fitted once, on new text and old text as it runs
                inputs = router_inputs(m, model, new_data, old_data, l2e, 16, cfg["batch_size"], cfg["block_size"],
                                       cfg["seed"])
                hinge = fit_new_router_rows(m, inputs, m.config.top_k, cfg["adapt_margin"], cfg["adapt_old_weight"])
                env.print(f"[adapt_{name}] new router rows fitted: hinge " + " ".join(f"{h:.3f}" for h in hinge))
            elif not train.checkpoint_or_exit(path)["model_args"].get("router_context"):
                raise SystemExit(f"error: {path} was made by an earlier keep_out (its router has no context "
                                 f"part); delete it and run again to adapt with today's keep_out")
        stage = train.Stage(f"adapt_{name}", cfg["adapt_steps"], cfg["adapt_lr"], "adapt", routing="group",
                            lang_to_expert=l2e, router_coef=0.0 if fit_row else cfg["router_alpha"],
                            freeze=freeze, meta=dict(meta, copied=copy_from, method=name))
        return train.train_stage(cfg, env, WithReplay(new_data, old_data, replay) if replay else new_data, stage, m)[0]
    methods = {
        # the paper's: all MoE weights train, the new expert copied from the most similar one
        "similar": lambda: new_expert("similar", best, moe_only),
        **{name: (lambda make=make: make(new_expert, best, worst, cfg)) for name, make in extra_methods.items()},
        # only the new expert trains; its router row is a margin classifier fitted once and kept fixed:
        # the new expert first for new tokens, below every old token's k-th choice
        "keep_out": lambda: new_expert("keep_out", best, new_expert_alone, fit_row=True)}
    models = {"before": model, **{name: make() for name, make in methods.items() if name in wanted}}
    if cpt_src is not None:   # the dense baseline: all of cpt fine-tuned, same batches
        models["cpt_before"] = model_from_checkpoint(cpt_src, env.device)
        models["cpt_finetune"], _ = train.train_stage(
            cfg, env, new_data, train.Stage("adapt_cpt", cfg["adapt_steps"], cfg["adapt_lr"], "adapt"),
            model_from_checkpoint(cpt_src, env.device))
    if not env.master:
        return None

    # evaluate: new languages (learned routing, and routed to the new expert); old ones (learned, and own expert)
    report = {"new_langs": new_langs, "old_langs": old_langs, "copied_from": best, "least_similar": worst,
              "affinity": mean_aff.tolist(), "methods": {}}
    kw = dict(block_size=cfg["block_size"], max_windows=cfg["eval_windows"])
    for name, m in models.items():
        r = {"new": evaluate(m, new_data, new_langs, routing="learned", **kw),
             "old": evaluate(m, old_data, old_langs, routing="learned", **kw)}
        if m.config.moe_layers:
            r["old_group"] = evaluate(m, old_data, old_langs, routing="group", lang_to_expert=old_l2e, **kw)
        if m.config.n_experts > new_e:
            r["new_group"] = evaluate(m, new_data, new_langs, routing="group", lang_to_expert=l2e, **kw)
        report["methods"][name] = {k: {l: {m_: v[m_] for m_ in ("loss", "ppl", "bpb")} for l, v in res.items()}
                                   for k, res in r.items()}
    path = os.path.join(cfg["out"], "adapt.json")
    if os.path.exists(path):   # a rerun with fewer --adapt_methods keeps the other methods' numbers
        with open(path) as f:
            report["methods"] = {**json.load(f)["methods"], **report["methods"]}
    print(adapt_table(report))
    save_json(report, path)
    print(f"\nwrote {path}")
    return report


def adapt_table(rep):
    """New-language perplexity and old-language forgetting of every adaptation method, as text."""
    def avg(res):
        return summarize(res)["ppl"]
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
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:   # Ctrl-C: the last checkpoint of every stage is kept
        raise SystemExit("\ninterrupted: run the same command again to resume from the last checkpoint")
