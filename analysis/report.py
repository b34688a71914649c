"""
A finished run looked at more closely, outside the method (the method's own table is eval.py's):

    python analysis/report.py out/dmoe.pt --routing --affinity   # where the learned router sends each
                                                               # language; ppl with every MoE layer
                                                               # forced to expert e
    python analysis/report.py out --pictures out/pics          # PNGs (text without matplotlib): deviation,
                                                               # similarity, loss curves, routing
    python analysis/report.py runs/s0 runs/s1 runs/s2          # several runs' results.json: mean ± std over
                                                               # runs, agreement of their groups (ARI)
"""

import argparse
import itertools
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import group  # noqa: E402
from analysis import plots  # noqa: E402
from common import default_device  # noqa: E402
from adapt import expert_affinity  # noqa: E402
from eval import _autocast as autocast, check_cli, each_checkpoint, load_results, summarize  # noqa: E402

# -----------------------------------------------------------------------------
# where the learned router sends each language

@torch.no_grad()
def routing_matrix(model, data, langs, split="val", block_size=None, max_windows=32, lang_to_expert=None,
                   device=None, batch_size=16):
    """
    Where the learned router sends each language's tokens. Returns a dict:
      langs, layers      the languages and the MoE block ids
      matrix             (n_moe, n_langs, E) share of each language's token-slots per expert, from
                         aux["expert_counts"] (top_k slots per token; rows sum to 1)
      top1, prob         (n_moe, n_langs, E) share of tokens whose first choice is e / mean router
                         probability of e (informative also when top_k >= E makes `matrix` uniform)
      own_group_share    (n_moe, n_langs) matrix's share to the language's group expert, nan where the
                         language has none; None without lang_to_expert (own_group_top1 likewise, top1)
      load, load_cv      (n_moe, E) share of all slots per expert; (n_moe,) its coefficient of variation
      load_top1(_cv)     the same for first choices
      top_k              the model's top_k
    """
    if not model.config.moe_layers:
        raise ValueError("routing_matrix needs an MoE model (this one is dense)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    block_size = block_size or model.config.block_size
    E, layers = model.config.n_experts, sorted(model.config.moe_layers)
    counts = np.zeros((len(layers), len(langs), E))
    top1 = np.zeros_like(counts)
    prob = np.zeros_like(counts)
    cur = {"li": 0}  # the language being evaluated, for the hooks

    def hook_for(k):
        # the router's view of the MoE input x (B, T, C): first choice and probabilities per token
        def hook(mod, args):
            x = args[0]
            p = mod.router_logits(x).softmax(-1)  # (B*T, E)
            top1[k, cur["li"]] += torch.bincount(p.argmax(-1), minlength=E).cpu().numpy()
            prob[k, cur["li"]] += p.sum(0).cpu().numpy()
        return hook

    handles = [m.register_forward_pre_hook(hook_for(k)) for k, m in enumerate(model.moe_modules())]
    was_training = model.training
    model.eval()
    try:
        for li, lang in enumerate(langs):
            cur["li"] = li
            x_all, y_all = data.eval_windows(lang, split, block_size, max_windows)  # (N, T) each
            for i in range(0, x_all.shape[0], batch_size):
                x = x_all[i:i + batch_size].to(device)  # (B, T)
                y = y_all[i:i + batch_size].to(device)
                with autocast(device):
                    _, _, aux = model(x, targets=y, routing="learned")
                counts[:, li, :] += aux["expert_counts"].float().cpu().numpy()  # (n_moe, E)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def rownorm(c):
        tot = c.sum(-1, keepdims=True)
        return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)

    cv = lambda load: load.std(-1) / np.maximum(load.mean(-1), 1e-12)
    load, load_top1 = rownorm(counts.sum(1)), rownorm(top1.sum(1))  # (n_moe, E) over all languages' tokens
    matrix, top1, prob = rownorm(counts), rownorm(top1), rownorm(prob)

    def own_share(M):
        if not lang_to_expert:
            return None
        own = np.full((len(layers), len(langs)), np.nan)
        for li, lang in enumerate(langs):
            e = lang_to_expert.get(lang)
            if e is not None and 0 <= e < E:
                own[:, li] = M[:, li, e]
        return own

    return {"langs": list(langs), "layers": layers, "matrix": matrix, "top1": top1, "prob": prob,
            "own_group_share": own_share(matrix), "own_group_top1": own_share(top1),
            "load": load, "load_cv": cv(load), "load_top1": load_top1, "load_top1_cv": cv(load_top1),
            "top_k": model.config.top_k}


# -----------------------------------------------------------------------------
# several runs (seeds)


def seed_summary(runs, baseline="cpt"):
    """Mean ± sample std over runs (e.g. seeds) of each variant's average perplexity and bits per byte,
    and of its % change against the baseline within each run. MoE variants evaluated with every language
    forced to its group's expert (train.py's "forced_group") get a second row, "<variant> forced"."""
    tables = {v: [r["variants"][v] for r in runs] for v in runs[0]["variants"] if all(v in r["variants"] for r in runs)}
    for v in runs[0].get("forced_group", {}):
        if all(v in r.get("forced_group", {}) for r in runs):
            tables[v + " forced"] = [r["forced_group"][v] for r in runs]
    seen_only = "base" in tables and any(r.get("new_langs") for r in runs)
    if seen_only:   # the base's average over every language is the unseen ones' (thousands): only what it saw
        tables["base"] = [{l: t[l] for l in r["base_langs"]} for t, r in zip(tables["base"], runs)]
    avg = {v: [summarize(t) for t in ts] for v, ts in tables.items()}   # per variant, per run
    lines = [f"{len(runs)} runs; mean ± std over runs of the per-run average over languages"
             + (" (base: over the languages it was trained on only)" if seen_only else ""),
             f"{'variant':<17} {'avg ppl':>16} {'avg bpb':>18} {'Δppl vs ' + baseline:>18}"]
    for v in avg:
        ppl = np.array([a["ppl"] for a in avg[v]])
        bpb = np.array([a["bpb"] for a in avg[v]])
        name = "base (seen)" if seen_only and v == "base" else v
        row = f"{name:<17} {ppl.mean():9.2f} ± {ppl.std(ddof=1):5.2f} {bpb.mean():10.4f} ± {bpb.std(ddof=1):.4f}"
        if baseline in avg and name == v:
            d = 100 * (ppl / np.array([a["ppl"] for a in avg[baseline]]) - 1)
            row += f" {d.mean():+9.2f}% ± {d.std(ddof=1):.2f}"
        lines.append(row)
    return "\n".join(lines)


def group_agreement(runs, names):
    """Pairwise adjusted Rand index of the runs' groups (results.json "groups"): how much the grouping
    depends on the seed (1 = the same groups, ~0 = chance)."""
    have = [(n, r["groups"]) for n, r in zip(names, runs) if r.get("groups")]
    if len(have) < 2:
        return "groups: fewer than two runs have groups, nothing to compare"
    pairs = [(a, b, group.adjusted_rand_index(ga, gb)) for (a, ga), (b, gb) in itertools.combinations(have, 2)]
    w = max(len(n) for n, _ in have)
    aris = np.array([ari for _, _, ari in pairs])
    return "\n".join(["groups: pairwise adjusted Rand index (1 = the same groups, ~0 = chance)"]
                     + [f"  {a:<{w}}  {b:<{w}}  {ari:6.3f}" for a, b, ari in pairs]
                     + [f"  mean {np.mean(aris):.3f}, min {np.min(aris):.3f} over {len(pairs)} pairs"])


# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="checkpoint files and/or run directories; two or more results.json "
                   "(or run directories holding one): a seed summary")
    p.add_argument("--routing", action="store_true", help="where the learned router sends each language")
    p.add_argument("--affinity", action="store_true", help="ppl with every MoE layer forced to each expert")
    p.add_argument("--pictures", default=None, metavar="OUTDIR", help="write PNGs (text without matplotlib)")
    p.add_argument("--profile", default=None, help="profile.json for pictures (default: RUN_DIR/profile.json)")
    p.add_argument("--groups", default=None, help="groups.json for pictures (default: RUN_DIR/groups.json)")
    p.add_argument("--baseline", default="cpt", help="variant the seed summary's %% changes are relative to")
    p.add_argument("--split", default="val", choices=["val", "parallel"])
    p.add_argument("--data_cache", default=None, help="dataset dir (default: the checkpoint's config['data_cache'])")
    p.add_argument("--langs", default=None, help="comma list (default: the checkpoint's languages)")
    p.add_argument("--max_windows", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default=default_device())
    args = p.parse_args(argv)
    check_cli(args)
    if args.pictures and os.path.exists(args.pictures) and not os.path.isdir(args.pictures):
        raise SystemExit(f"error: --pictures {args.pictures} is a file; give a folder to write the pictures to")
    is_results = lambda q: q.endswith(".json") or os.path.isfile(os.path.join(q, "results.json"))
    if len(args.paths) > 1 and all(map(is_results, args.paths)):  # several runs (seeds)
        if args.routing or args.affinity or args.pictures:
            raise SystemExit("error: several runs make a seed summary; --routing, --affinity and --pictures read "
                             "one run's checkpoints: give one run (or its .pt files) per call for those")
        runs = [load_results(q) for q in args.paths]
        print(seed_summary(runs, baseline=args.baseline))
        print()
        print(group_agreement(runs, args.paths))
        return runs
    if not (args.routing or args.affinity or args.pictures):
        raise SystemExit("error: say what to report: --routing, --affinity and/or --pictures DIR "
                         "(or give two or more runs' results.json for a seed summary)")
    analyses = {}
    for variant, path, ckpt, model, data, langs in each_checkpoint(args.paths, args.device, args.data_cache, args.langs):
        if not model.config.moe_layers:
            continue
        lang_to_expert = ckpt.get("lang_to_expert")
        if args.routing or args.pictures:
            rm = routing_matrix(model, data, langs, split=args.split, max_windows=args.max_windows,
                                lang_to_expert=lang_to_expert, device=args.device, batch_size=args.batch_size)
            analyses[variant] = (rm, lang_to_expert)
            if args.routing:
                print(f"\nrouting of {variant} ({path}, learned router, {args.split} split)")
                print(plots.routing_report(rm, lang_to_expert))
        if args.affinity:
            aff = expert_affinity(model, data, langs, split=args.split, max_windows=min(args.max_windows, 16),
                                  device=args.device, batch_size=args.batch_size)
            print(f"\nexpert affinity of {variant} ({path})")
            print(plots.affinity_report(aff, langs, lang_to_expert))
    if args.pictures:
        run_dir = next((q for q in args.paths if os.path.isdir(q)), os.path.dirname(args.paths[0]) or ".")
        written = plots.write_pictures(args.pictures, run_dir, analyses, args.profile, args.groups)
        if written:
            print("\nwrote " + ", ".join(written))
    return analyses


if __name__ == "__main__":
    main()
