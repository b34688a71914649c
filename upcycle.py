"""
Sparse upcycling ("Group then Scale", step 4) and expert addition (step 6).

upcycle(dense, layers, n_experts)  a new GPT whose FFN in each chosen layer is an MoE of n_experts exact
                                   copies of that layer's dense FFN (weights and biases) with a fresh
                                   router N(0, 0.02); everything else is carried over unchanged. Because
                                   every expert is the same function and the routing weights of a token
                                   sum to 1 (group routing: one expert, weight 1; learned: top-k
                                   renormalised), the upcycled model computes exactly what the dense one did.
add_expert(model, src)             append a copy of expert `src` (and its router row) in every MoE layer.

CLI:  python upcycle.py RUN/base.pt --groups RUN/groups.json --out MOE_CKPT    # what train.py's dmoe starts from
      python upcycle.py DENSE_CKPT --layers 0,3 --experts 6 --out MOE_CKPT
"""

import argparse
import json
from dataclasses import asdict, replace

import torch
import torch.nn as nn

from model import GPT, load_checkpoint, model_from_checkpoint, save_checkpoint


@torch.no_grad()
def upcycle(dense, layers, n_experts, top_k=2, seed=0):
    """A new GPT with config.moe_layers=layers, each MoE's experts copied from the dense FFN."""
    cfg = dense.config
    layers = sorted(set(int(l) for l in layers))
    if cfg.moe_layers:
        raise ValueError(f"upcycle expects a dense model, this one has MoE layers {cfg.moe_layers}")
    if not layers or not all(0 <= l < cfg.n_layer for l in layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{cfg.n_layer - 1}, got {layers}")
    if n_experts < 1 or not 1 <= top_k <= n_experts:
        raise ValueError(f"need n_experts >= 1 and 1 <= top_k <= n_experts, got {n_experts}, {top_k}")
    E, C = n_experts, cfg.n_embd
    device = next(dense.parameters()).device
    dtype = next(dense.parameters()).dtype

    with torch.random.fork_rng(devices=[]):  # building the new model must not disturb the caller's RNG
        moe = GPT(replace(cfg, moe_layers=layers, n_experts=E, top_k=top_k))
    state = to_experts(dense.state_dict(), layers, E)
    gen = torch.Generator().manual_seed(seed)
    for l in layers:   # a fresh router: N(0, 0.02)
        state[f"transformer.h.{l}.ffn.router.weight"] = (torch.randn(E, C, generator=gen) * 0.02).to(dtype)
    moe.load_state_dict(state, strict=True)  # strict: every weight of the new model was set above
    return moe.to(device=device, dtype=dtype)


# dense FFN parameter -> expert parameter, and whether its matrix is stored transposed in the experts
EXPERT_OF = {"c_fc.weight": ("w_fc", True), "c_proj.weight": ("w_proj", True), "c_fc.bias": ("b_fc", False),
             "c_proj.bias": ("b_proj", False)}


def to_experts(tensors, layers, n_experts):
    """Rename and copy a dense model's FFN tensors (its state_dict, or one AdamW moment per parameter) to
    those of the MoE experts: c_fc.weight (4C, C) -> w_fc (E, C, 4C), c_proj.weight (C, 4C) -> w_proj
    (E, 4C, C), c_fc.bias -> b_fc (E, 4C), c_proj.bias -> b_proj (E, C). The rest is kept as it is."""
    out = dict(tensors)
    for l in layers:
        p = f"transformer.h.{l}.ffn."
        for dense, (expert, transposed) in EXPERT_OF.items():
            if p + dense in out:
                t = out.pop(p + dense)
                t = t.t() if transposed else t
                out[p + expert] = t.expand(n_experts, *t.shape).clone()
    return out


def upcycle_adam(adam, layers, n_experts):
    """The dense model's AdamW state ({param name: {"step", "exp_avg", "exp_avg_sq"}}) for the upcycled
    model: every expert starts from its dense FFN's moments, as it starts from its weights; the new router
    has none. (A fresh AdamW moves every weight by about ±lr on its first steps: a jolt that undoes part
    of a converged model's training.)"""
    moments = {k: to_experts({n: s[k] for n, s in adam.items()}, layers, n_experts) for k in ("exp_avg", "exp_avg_sq")}
    step = next(iter(adam.values()))["step"]   # the same for every parameter of one optimizer
    return {n: {"step": step.clone(), "exp_avg": m, "exp_avg_sq": moments["exp_avg_sq"][n]}
            for n, m in moments["exp_avg"].items()}


@torch.no_grad()
def add_expert(model, src):
    """Append a copy of expert `src` and of router row `src` to every MoE layer (in place).
    Returns the new expert's id. Build the optimizer after this (the parameters are new tensors)."""
    moes = model.moe_modules()
    if not moes:
        raise ValueError("add_expert needs a model with MoE layers")
    E = model.config.n_experts
    if not 0 <= src < E:
        raise ValueError(f"src expert {src} out of range [0, {E})")
    for moe in moes:
        for name in ("w_fc", "b_fc", "w_proj", "b_proj"):
            p = getattr(moe, name)
            if p is not None:
                setattr(moe, name, nn.Parameter(torch.cat([p, p[src:src + 1]]), requires_grad=p.requires_grad))
        for router in (moe.router, moe.router_context):   # the context part: keep_out's (adapt.py), if any
            if router is not None:
                w = router.weight  # (E, C)
                router.weight = nn.Parameter(torch.cat([w, w[src:src + 1]]), requires_grad=w.requires_grad)
                router.out_features = E + 1
        moe.n_experts = E + 1
    model.config.n_experts = E + 1
    return E


def upcycle_checkpoint(dense_ckpt, layers, n_experts, top_k=2, seed=0):
    """Dense checkpoint dict -> MoE checkpoint dict (vocab, langs, config carried; optimizer dropped)."""
    dense = model_from_checkpoint(dense_ckpt, "cpu")
    moe = upcycle(dense, layers, n_experts, top_k=top_k, seed=seed)
    ckpt = {k: v for k, v in dense_ckpt.items() if k not in ("model", "model_args", "optimizer")}
    ckpt.update(
        model=moe.state_dict(),
        model_args=asdict(moe.config),
        optimizer=None,  # a fresh optimizer for the new parameters
        step=0,
        stage="upcycled",
        upcycled_from=dict(step=dense_ckpt.get("step"), stage=dense_ckpt.get("stage"), seed=seed),
    )
    return ckpt


def main(argv=None):
    ap = argparse.ArgumentParser(description="Upcycle a dense nanoDMoE checkpoint into an MoE checkpoint. "
                                 "With --groups RUN/groups.json and nothing else, the MoE model train.py's "
                                 "dmoe starts from (its layers, one expert per group, the run's top_k and seed).")
    ap.add_argument("dense_ckpt", help="path of the dense checkpoint")
    ap.add_argument("--groups", default=None, help="groups.json (group.py): its MoE layers and groups")
    ap.add_argument("--layers", default=None, help="comma-separated block indices to upcycle, or 'all'")
    ap.add_argument("--experts", type=int, default=None, help="experts per MoE layer (one per group)")
    ap.add_argument("--top_k", type=int, default=None, help="experts per token under learned routing (default: the run's, else 2)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the new routers' init (default: the run's, else 0)")
    ap.add_argument("--out", required=True, help="where to write the MoE checkpoint")
    args = ap.parse_args(argv)
    from common import unwritable
    why = unwritable(args.out)
    if why:
        raise SystemExit(f"upcycle.py: --out {args.out} {why}; give a file path")
    try:
        dense_ckpt = load_checkpoint(args.dense_ckpt)
    except RuntimeError as e:
        raise SystemExit(f"upcycle.py: {e}")
    n_layer = dense_ckpt["model_args"]["n_layer"]
    grp = {}
    if args.groups:
        try:
            with open(args.groups) as f:
                grp = json.load(f)
            grp["moe_layers"], grp["groups"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"upcycle.py: --groups {args.groups} is not a groups.json that group.py wrote ({e})")
    if args.layers is None and not grp or args.experts is None and not grp:
        raise SystemExit("upcycle.py: give --groups groups.json, or both --layers and --experts")
    try:
        layers = (grp["moe_layers"] if args.layers is None else list(range(n_layer)) if args.layers == "all"
                  else [int(s) for s in args.layers.split(",") if s])
    except ValueError:
        raise SystemExit(f"upcycle.py: --layers {args.layers!r}: give block indices like 0,3 (of 0..{n_layer - 1}) or 'all'")
    experts = len(grp["groups"]) if args.experts is None else args.experts
    run = dense_ckpt.get("config") or {}
    top_k = run.get("top_k", 2) if args.top_k is None else args.top_k
    seed = run.get("seed", 0) if args.seed is None else args.seed
    try:
        ckpt = upcycle_checkpoint(dense_ckpt, layers, experts, top_k=top_k, seed=seed)
    except ValueError as e:   # layers out of range, experts < 1, top_k > experts, an MoE checkpoint
        raise SystemExit(f"upcycle.py: {e}; see python upcycle.py --help")
    if grp and experts == len(grp["groups"]):   # the groups travel with it (group routing, eval, adapt)
        ckpt.update(groups=grp["groups"], lang_to_expert={l: e for e, g in enumerate(grp["groups"]) for l in g})
    save_checkpoint(args.out, ckpt)
    n_dense = sum(v.numel() for k, v in dense_ckpt["model"].items() if k != "lm_head.weight")
    n_moe = sum(v.numel() for k, v in ckpt["model"].items() if k != "lm_head.weight")
    print(f"upcycled {args.dense_ckpt} -> {args.out}: layers {layers}, {experts} experts, "
          f"top_k {top_k}; params {n_dense:,} -> {n_moe:,}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("\ninterrupted: nothing was written; run the same command again")
