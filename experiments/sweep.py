"""
Where does grouping matter? Runs train.py over one axis at a time around the default, 3 seeds per point,
and keeps the averages in experiments/sweep/<axis>.json, so that docs/EXPERIMENTS.md §7's table and the
plot (experiments/plot.py) can be redrawn without retraining. The axes are relative to train.py's
defaults; experiments/sweep/top_k.json was measured around the first default (a base on all 18, 20 + 180
steps), so move it aside before sweeping top_k around today's.

    python experiments/sweep.py width                 # every point of one axis, seeds 0 1 2
    python experiments/sweep.py width --seeds 0       # fewer seeds
    python experiments/sweep.py --list                # the axes and their points

Each point runs `python train.py --langs 18 <overrides> --variants cpt,dmoe,random --seed S` into
runs/sweep/<axis>/<point>/s<S>/. Points that share the dense base (same model, base schedule, seed and
profiling) train it once: its base.pt and profile.json are copied into the other points' folders, and
train.py then skips those stages. The grouping gain is (random - dmoe) / random average perplexity, under
learned routing and with every language forced to its group's expert.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402  (the settings and presets)
from common import save_json  # noqa: E402
from eval import summarize  # noqa: E402

# axis -> [(point name, train.py overrides)]; the default is the point without overrides
AXES = {
    # the share of the budget after base (stage 1 + stage 2 steps, the base unchanged)
    "after_base": [("x0.2", {"stage1_steps": 0.2, "stage2_steps": 0.2}), ("x0.5", {"stage1_steps": 0.5, "stage2_steps": 0.5}),
                   ("x1", {})],
    # the languages the base is pretrained on: all 18, BLOOM's 10 (auto, the default), 5 of those
    "base_langs": [("18", {"base_langs": "all"}), ("10", {}), ("5", {"base_langs": "ar,fr,hi,vi,zh"})],
    # the MoE layers: the paper's eps rule, the top layer only, every layer (the default)
    "moe_layers": [("eps0.6", {"eps": 0.6}), ("eps1", {"eps": 1.0}), ("all", {})],
    "stage1": [("10%", {}), ("50%", {"stage1_steps": 0.5}), ("100%", {"stage1_steps": 1.0})],
    "top_k": [("k1", {"top_k": 1}), ("k2", {})],
    "width": [("d32", {"n_embd": 32, "n_head": 1}), ("d64", {}), ("d128", {"n_embd": 128, "n_head": 4})],
    "groups": [("k3", {"n_groups": 3}), ("k6", {"n_groups": 6}), ("k9", {})],
}
# the sweep was measured with every language grouped by similarity, in pairs by default (train.py's default
# until --new_experts own): pinned, so that a point keeps meaning what it meant when it was measured
PINNED = {"new_experts": "grouped", "n_groups": 9}
# what the dense base depends on: points equal in these share it
BASE_KEYS = ("base_langs", "n_layer", "n_head", "n_embd", "block_size", "dropout", "vocab_size", "batch_size", "grad_accum",
             "base_steps", "base_lr", "sample_alpha", "profile_method", "profile_steps", "profile_lr",
             "profile_batch", "profile_repeats", "profile_windows", "profile_center", "profile_split", "last_layers")
# ... and what the dense cpt baseline depends on besides (not the groups, not top_k): points equal in
# these share cpt too
CPT_KEYS = BASE_KEYS + ("stage1_steps", "stage2_steps", "lr")
SHARED = {BASE_KEYS: ("base.pt", "profile.json"), CPT_KEYS: ("cpt_stage1.pt", "cpt.pt")}


def resolve(overrides, cfg):
    """Turn the relative overrides into train.py settings: steps given as fractions are relative (to the
    default's steps, or for stage1 to the default's stage1 + stage2 steps, keeping the total)."""
    out = {}
    for k, v in overrides.items():
        if k == "stage1_steps" and "stage2_steps" not in overrides:    # a share of the MoE budget
            total = cfg["stage1_steps"] + cfg["stage2_steps"]
            out["stage1_steps"] = round(v * total)
            out["stage2_steps"] = total - out["stage1_steps"]
        elif k.endswith("_steps"):
            out[k] = round(v * cfg[k])
        else:
            out[k] = v
    return out


def tokens_per_expert_param(cfg):
    """Tokens that passed through one expert's weights over the run (as the dense FFN in base, then its
    share of the MoE token-slots: one per token in stage 1, top_k in stage 2) / the parameters of one expert."""
    tokens = cfg["batch_size"] * cfg["block_size"] * cfg["grad_accum"]
    d = cfg["n_embd"]
    moe_slots = tokens * (cfg["stage1_steps"] + cfg["stage2_steps"] * min(cfg["top_k"], cfg["n_groups"]))
    return (tokens * cfg["base_steps"] + moe_slots / cfg["n_groups"]) / (8 * d * d + 5 * d)


def averages(res):
    """{variant: avg ppl} under learned routing and, as '<variant> forced', forced to the group expert."""
    out = {v: summarize(r)["ppl"] for v, r in res["variants"].items()}
    out.update({f"{v} forced": summarize(r)["ppl"] for v, r in res.get("forced_group", {}).items()})
    for part in ("seen", "new"):   # where the base did not see every language: each part apart
        for kind, suffix in (("variants", ""), ("forced_group", " forced")):
            for v, ppl in res.get("by_langs", {}).get(part, {}).get(kind, {}).items():
                out[f"{v}{suffix} {part}"] = ppl
    return out


def share(out, shared):
    """Offer a finished run's dense stages to the points that can reuse them."""
    for keys, files in SHARED.items():
        os.makedirs(shared[keys], exist_ok=True)
        for f in files:
            if os.path.exists(os.path.join(out, f)) and not os.path.exists(os.path.join(shared[keys], f)):
                shutil.copy(os.path.join(out, f), os.path.join(shared[keys], f))


def run_point(axis, name, overrides, seed, variants):
    cfg = dict(train.DEFAULTS, **PINNED)
    settings = dict(PINNED, **resolve(overrides, cfg), seed=seed)
    cfg.update(settings)
    out = os.path.join(ROOT, "runs", "sweep", axis, name, f"s{seed}")
    args = ["--langs", "18"] + [a for k, v in settings.items() for a in (f"--{k}", str(v))]
    command = "python train.py " + " ".join(args + ["--variants", variants, "--out", os.path.relpath(out, ROOT)])
    res_path = os.path.join(out, "results.json")
    done = os.path.exists(res_path) and set(variants.split(",")) <= set(json.load(open(res_path))["variants"])
    shared = {keys: os.path.join(ROOT, "runs", "sweep", "_shared", "-".join(str(cfg[k]) for k in keys), f"s{seed}")
              for keys in SHARED}
    if not done:
        os.makedirs(out, exist_ok=True)
        for keys, files in SHARED.items():   # stages another point already trained: train.py skips them
            for f in files:
                if os.path.exists(os.path.join(shared[keys], f)) and not os.path.exists(os.path.join(out, f)):
                    shutil.copy(os.path.join(shared[keys], f), os.path.join(out, f))
        t0 = time.time()
        print(f"[sweep] {command}", flush=True)
        with open(os.path.join(out, "train.log"), "w") as log:
            rc = subprocess.call([sys.executable, "train.py"] + args + ["--variants", variants, "--out", out],
                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if rc:
            raise SystemExit(f"error: {command} failed (exit {rc}); see {out}/train.log")
        print(f"[sweep] {axis}/{name} seed {seed}: {(time.time() - t0) / 60:.1f} min", flush=True)
        share(out, shared)
    with open(res_path) as f:
        res = json.load(f)
    return {"command": command, "avg_ppl": averages(res), "groups": res["groups"], "minutes": res.get("minutes"),
            "tokens_per_expert_param": tokens_per_expert_param(cfg)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("axis", nargs="?", choices=list(AXES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="cpt,dmoe,random")
    p.add_argument("--points", default="", help="comma list of the axis' points to run (default: all)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list or not args.axis:
        for axis, points in AXES.items():
            print(f"{axis:8s} " + "  ".join(f"{n} {o or '(default)'}" for n, o in points))
        return
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        raise SystemExit(f"error: --seeds {args.seeds!r}: give seeds like 0,1,2")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [name for name, _ in AXES[args.axis]]
    unknown = [n for n in (args.points.split(",") if args.points else []) if n not in names]
    if unknown:
        raise SystemExit(f"error: --points {','.join(unknown)}: not on the {args.axis} axis ({', '.join(names)})")
    path = os.path.join(ROOT, "experiments", "sweep", f"{args.axis}.json")
    report = {"axis": args.axis, "defaults": {k: dict(train.DEFAULTS, **PINNED)[k] for k in BASE_KEYS + (
        "stage1_steps", "stage2_steps", "lr", "top_k", "n_groups")}, "points": []}
    if os.path.exists(path):   # points measured before (e.g. with --points) are kept
        with open(path) as f:
            report["points"] = json.load(f)["points"]
    wanted = args.points.split(",") if args.points else [name for name, _ in AXES[args.axis]]
    for name, overrides in AXES[args.axis]:
        if name not in wanted:
            continue
        runs = {str(s): run_point(args.axis, name, overrides, s, args.variants) for s in seeds}
        report["points"] = [p for p in report["points"] if p["name"] != name]
        report["points"].append({"name": name, "overrides": resolve(overrides, dict(train.DEFAULTS)), "seeds": runs})
        order = [n for n, _ in AXES[args.axis]]
        report["points"].sort(key=lambda p: order.index(p["name"]))
        save_json(report, path)   # after every point: a stopped sweep keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
