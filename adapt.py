"""
New-language adaptation (docs/METHOD.md §7): give a trained DMoE model languages it never saw.

    python adapt.py --adapt be,sr --from out/dmoe.pt

1. Which existing expert is closest to the new languages? Their perplexity with every MoE layer forced
   to expert e, for each e; the lowest wins.
2. Add one expert (in every MoE layer): a copy of that expert's FFN and of its router row (upcycle.add_expert).
3. Train it on the new languages, routed to the new expert, in one of these ways (same batches, --adapt_lr):
   similar      the paper's: every MoE weight (experts and routers) trains, with the router loss;
   keep_out     only the new expert and its router row train (a gradient mask), on the new text plus a
                share of old-language text; the new router row is first fitted, then trained, as a margin
                classifier: new tokens rank the new expert first, old tokens keep it below their k-th
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
from common import Env, save_json
from config import RunDir, check_settings, parse_args
from eval import evaluate, expert_affinity, summarize
from model import load_checkpoint, model_from_checkpoint
from tokenizer import Tokenizer
from upcycle import add_expert

# ----------------------------------------------------------------------------------------------------
# settings: train.py's (the source run's model settings are taken from its checkpoint) and these
adapt = ""                   # comma list of new languages (required)
adapt_from = ""              # the trained MoE checkpoint to extend (alias: --from; required)
adapt_steps = 100
adapt_lr = 2e-4
adapt_replay = 0.25          # keep_out: share of old-language sequences in its batches
adapt_margin = 1.0           # keep_out: router-logit margin that keeps old tokens off the new expert
adapt_methods = "similar,keep_out,cpt"   # which to run (ablations/adapt_methods.py adds three more)
DEFAULTS = dict(train.DEFAULTS, **{k: v for k, v in list(globals().items()) if k.startswith("adapt")})
ALIASES = {"from": "adapt_from"}
# ----------------------------------------------------------------------------------------------------

# the settings that decide an adaptation's checkpoints: another value needs another --out
KEYS = ("adapt", "adapt_from", "adapt_steps", "adapt_lr", "adapt_replay", "adapt_margin", "router_alpha", "seed", "batch_size", "grad_accum",
        "data_dir", "data_cache", "max_tokens_per_lang", "data_seed", "weight_decay", "beta1", "beta2", "grad_clip",
        "warmup_frac", "min_lr_frac", "sample_alpha", "dtype")


def moe_only(model):
    """The paper's: freeze everything but the MoE layers (routers + experts)."""
    prefixes = tuple(f"transformer.h.{l}.ffn." for l in model.config.moe_layers)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(prefixes)


def new_expert_only(model):
    """Freeze everything but the newest expert and its router row: the stacked expert tensors and the
    router keep their other rows through a gradient mask (zero gradient, no weight decay: AdamW leaves
    them exactly as they were)."""
    new = model.config.n_experts - 1
    for p in model.parameters():
        p.requires_grad = False
    for moe in model.moe_modules():
        for p in (moe.w_fc, moe.b_fc, moe.w_proj, moe.b_proj, moe.router.weight):
            if p is not None:
                p.requires_grad = True
                mask = torch.zeros_like(p)
                mask[new] = 1.0
                p.register_hook(lambda g, mask=mask: g * mask)


class KeepOut(train.Stage):
    """A stage that trains the new router row as a margin classifier instead of with the router
    cross-entropy: for every MoE layer, a token of a new language should rank the new expert first and a
    token of an old language (the replay share of the batch) should keep it out of its top-k,
        new tokens:  relu(max_old z - z_new + margin)      old tokens:  relu(z_new - z_(k) + margin)
    with z_(k) the k-th largest of the old experts' router logits. Once the margins hold the row stops
    moving (the cross-entropy would push it up forever, and old tokens with it). The old router rows are
    frozen, so an old token whose margin holds keeps its top-k, and its weights, exactly as before."""

    def __init__(self, *args, top_k, margin=1.0, **kw):
        super().__init__(*args, **kw)
        self.top_k, self.margin, self.seen = top_k, margin, []
        freeze = self.freeze

        def freeze_and_watch(model):   # the router logits and targets of every MoE layer, every forward
            freeze(model)
            for moe in model.moe_modules():
                moe.register_forward_pre_hook(lambda mod, args: self.seen.append(
                    (mod.router_logits(args[0].reshape(-1, args[0].shape[-1])), args[1], args[0].shape[1]))
                    if mod.training else None)
        self.freeze = freeze_and_watch

    def loss(self, lm_loss, aux):
        hinges = []
        for z, seq_expert, T in self.seen:       # z (N, E+1); seq_expert (B,) the group expert of each sequence
            new = z.shape[1] - 1
            is_new = seq_expert.repeat_interleave(T) == new                   # (N,)
            kth = z[:, :new].topk(min(self.top_k, new), dim=-1).values      # (N, k) best old logits
            for tokens, gap in ((is_new, kth[:, 0] - z[:, new]), (~is_new, z[:, new] - kth[:, -1])):
                if tokens.any():   # new and old tokens count alike, whatever their share of the batch
                    hinges.append(F.relu(gap[tokens] + self.margin).mean())
        self.seen.clear()
        return lm_loss + torch.stack(hinges).mean() if hinges else lm_loss


@torch.no_grad()
def router_inputs(model, dataset, lang_to_expert, batches, batch_size, block_size, seed):
    """The inputs of every MoE layer's router, with the sequences group-routed as in training: a list, per
    MoE layer, of (x (N, C) float32, expert (N,) int64: the token's group expert)."""
    moes = model.moe_modules()
    seen = [[] for _ in moes]
    hooks = [moe.register_forward_pre_hook(lambda mod, args, i=i: seen[i].append(
        (args[0].reshape(-1, args[0].shape[-1]).float(), args[1].repeat_interleave(args[0].shape[1]))))
        for i, moe in enumerate(moes)]
    to_expert = torch.tensor([lang_to_expert[l] for l in dataset.langs])
    gen, probs = torch.Generator().manual_seed(seed), dataset.sampling_probs(0.3)
    device = next(model.parameters()).device
    try:
        for _ in range(batches):
            x, _, li = dataset.mixed_batch("train", batch_size, block_size, probs, gen, device)
            model(x, expert_ids=to_expert[li.cpu()].to(device), routing="group")
    finally:
        for h in hooks:
            h.remove()
    return [(torch.cat([x for x, _ in s]), torch.cat([e for _, e in s]).cpu()) for s in seen]


def fit_new_router_rows(model, inputs, top_k, margin, steps=300, lr=1e-2):
    """Set the new expert's router row in every MoE layer to a margin classifier fitted on fixed router
    inputs (router_inputs): new-language tokens should rank the new expert first, old-language tokens
    should keep it below their k-th choice (the hinges of KeepOut). Done before the new expert trains,
    because a row copied from an old expert starts tied with it for that expert's old tokens, and at an
    adaptation learning rate it cannot move far enough in 100 steps. Returns the final hinge per layer."""
    out = []
    for moe, (x, expert) in zip(model.moe_modules(), inputs):
        W = moe.router.weight.detach()
        new = W.shape[0] - 1
        x = x.to(W.device)
        z_old = x @ W[:new].float().T                                          # (N, E) fixed
        kth = z_old.topk(min(top_k, new), dim=-1).values
        is_new = (expert == new).to(W.device)
        w = W[new].float().clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            z_new = x @ w
            loss = (F.relu(kth[is_new, 0] - z_new[is_new] + margin).mean()
                    + F.relu(z_new[~is_new] - kth[~is_new, -1] + margin).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        moe.router.weight.data[new] = w.detach().to(W.dtype)
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


def check_adapt_settings(cfg, methods):
    """adapt.py's own settings, one line each, before any work (train.py's are check_settings')."""
    def need(ok, msg):
        if not ok:
            raise SystemExit(f"error: {msg}")
    need(cfg["adapt_steps"] >= 1, f"--adapt_steps must be at least 1, got {cfg['adapt_steps']}")
    need(math.isfinite(cfg["adapt_lr"]) and cfg["adapt_lr"] > 0, f"--adapt_lr must be a positive number, got {cfg['adapt_lr']}")
    need(math.isfinite(cfg["adapt_margin"]) and cfg["adapt_margin"] >= 0, f"--adapt_margin must be 0 or more, got {cfg['adapt_margin']}")
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
    cfg = parse_args(argv, DEFAULTS, train.PRESETS, ALIASES, __doc__)
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
    if cfg["out"] == DEFAULTS["out"]:   # one folder per new languages and source model
        cfg["out"] = os.path.join(run_dir, f"adapt-{'_'.join(new_langs)}-from-{variant}")
    cfg["adapt_from"] = os.path.abspath(cfg["adapt_from"])
    for k in ("block_size", "vocab_size", "top_k"):
        cfg[k] = old_cfg[k]
    cfg["data_cache"] = cfg["data_cache"] or data.default_cache(cfg["adapt"], cfg["vocab_size"], cfg["data_seed"],
                                                                cfg["data_dir"] or None) + "-vocab-of-" + os.path.basename(run_dir)
    env = Env(cfg)
    run = RunDir(cfg, keys=KEYS).open() if env.master else None
    new_data = train.load_data(cfg, env, new_langs, tokenizer=Tokenizer.from_state_dict(src["vocab"]))
    old_data = data.Dataset.load(old_cfg["data_cache"])
    if env.master:
        run.write_config()
    model = model_from_checkpoint(src, env.device)
    old_l2e = src["lang_to_expert"]

    # 1. the closest expert: perplexity of the new languages with every MoE layer forced to e
    aff = expert_affinity(model, new_data, new_langs, block_size=cfg["block_size"], max_windows=cfg["eval_windows"])
    mean_aff = np.exp(np.log(aff).mean(axis=0))      # (E,) geometric mean ppl over the new languages
    best, worst = int(mean_aff.argmin()), int(mean_aff.argmax())
    env.print(f"[adapt] expert affinity (ppl of {','.join(new_langs)} with every MoE layer forced to e): "
              + "  ".join(f"e{e} {p:.1f}" for e, p in enumerate(mean_aff))
              + f"  -> copy e{best} (least similar: e{worst})")

    # 2. + 3. one new expert, copied from `copy_from`, trained on the new languages routed to it
    new_e = model.config.n_experts
    l2e = dict(old_l2e, **{l: new_e for l in new_langs})
    meta = {"variant": "adapt", "groups": src["groups"] + [new_langs], "lang_to_expert": l2e,
            "moe_layers": model.config.moe_layers}

    def new_expert(name, copy_from, freeze, replay=0.0, stage_class=train.Stage, **extra):
        m = model_from_checkpoint(src, env.device)
        add_expert(m, copy_from)
        if stage_class is KeepOut and not os.path.exists(os.path.join(cfg["out"], f"adapt_{name}.pt")):
            # the new router row starts as a margin classifier fitted on new and old text (half each)
            inputs = router_inputs(m, WithReplay(new_data, old_data, 0.5), l2e, 32, cfg["batch_size"],
                                   cfg["block_size"], cfg["seed"])
            hinge = fit_new_router_rows(m, inputs, m.config.top_k, cfg["adapt_margin"])
            env.print(f"[adapt_{name}] new router rows fitted: hinge " + " ".join(f"{h:.3f}" for h in hinge))
        stage = stage_class(f"adapt_{name}", cfg["adapt_steps"], cfg["adapt_lr"], "adapt", routing="group",
                            lang_to_expert=l2e, router_coef=0.0 if stage_class is KeepOut else cfg["router_alpha"],
                            freeze=freeze,
                            meta=dict(meta, copied=copy_from, method=name), **extra)
        return train.train_stage(cfg, env, WithReplay(new_data, old_data, replay) if replay else new_data, stage, m)[0]
    methods = {
        # the paper's: all MoE weights train, the new expert copied from the most similar one
        "similar": lambda: new_expert("similar", best, moe_only),
        **{name: (lambda make=make: make(new_expert, best, worst, cfg)) for name, make in extra_methods.items()},
        # only the new expert and its router row train, on new text + old text (replay), with margins
        # instead of the router loss: the new expert first for new tokens, below every old token's k-th choice
        "keep_out": lambda: new_expert("keep_out", best, new_expert_only, cfg["adapt_replay"], KeepOut,
                                       top_k=model.config.top_k, margin=cfg["adapt_margin"])}
    models = {"before": model, **{name: make() for name, make in methods.items() if name in wanted}}
    cpt_path = os.path.join(run_dir, "cpt.pt")
    if "cpt" in wanted and os.path.exists(cpt_path):   # the dense baseline: all of cpt fine-tuned, same batches
        models["cpt_before"] = model_from_checkpoint(load_checkpoint(cpt_path), env.device)
        models["cpt_finetune"], _ = train.train_stage(
            cfg, env, new_data, train.Stage("adapt_cpt", cfg["adapt_steps"], cfg["adapt_lr"], "adapt"),
            model_from_checkpoint(load_checkpoint(cpt_path), env.device))
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
