"""
Are the groups of a profile taken after a short dense warm-up on every language more stable over seeds,
and better for the MoE, than the groups of the base's profile? (issue 18: in the paper's situation each
seed's base pairs the 8 languages it never saw differently, ARI 0.29-0.53 over seeds.)

The warm model is the run's own `cpt_stage1.pt`: the base after the first 100 steps on all 18 languages,
which the cpt variant trains anyway. Its profile (profile.py, the run's settings) gives the groups; dmoe is
then trained exactly as the default does (upcycled from the base, 100 + 900 steps), in a copy of the run
folder whose base, cpt and random variants are the default run's own (random groups depend only on the
group sizes and the seed, so they are the same). Resumable: a seed whose JSON exists is skipped.

    python experiments/regime/extra/warm_profile.py --runs runs/def9 --seeds 0,1,2            # groups, ARI
    python experiments/regime/extra/warm_profile.py --runs runs/def9 --seeds 0,1,2 --train    # + dmoe
"""
import argparse
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
import group  # noqa: E402
from common import save_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from points import avg_ppl, pending, point_record  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP = ("config.json", "base.pt", "cpt_stage1.pt", "cpt.pt", "random_stage1.pt", "random.pt")


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/def9", help="folder of the default runs, one sS/ per seed")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/warm")
    p.add_argument("--train", action="store_true", help="also train dmoe on the warm groups")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    groups = {}
    for s in seeds:
        src, dst = os.path.join(args.runs, f"s{s}"), os.path.join(args.out, f"s{s}")
        os.makedirs(dst, exist_ok=True)
        prof = os.path.join(dst, "profile.json")
        if not os.path.exists(prof):
            run([sys.executable, "profile.py", "--ckpt", os.path.join(src, "cpt_stage1.pt"), "--out", prof])
        with open(os.path.join(src, "groups.json")) as f:
            base_groups = json.load(f)["groups"]
        with open(prof) as f:
            warm = group.make_groups(json.load(f), 9, "agglomerative", 0.0, seed=s)
        groups[s] = (base_groups, warm["groups"])
        print(f"seed {s}: base profile {base_groups}\n        warm profile {warm['groups']}  "
              f"ARI to the base's {group.adjusted_rand_index(base_groups, warm['groups']):.2f}")
    pairs = list(itertools.combinations(seeds, 2))
    ari = {kind: {f"{a}-{b}": round(group.adjusted_rand_index(groups[a][i], groups[b][i]), 2) for a, b in pairs}
           for i, kind in enumerate(("base", "warm"))}
    print("ARI over seeds:", ari)
    summary = {"ari_over_seeds": ari, "groups": {s: {"base": g[0], "warm": g[1]} for s, g in groups.items()},
               "command": "python experiments/regime/extra/warm_profile.py " + " ".join(sys.argv[1:])}
    save_json(summary, os.path.join(HERE, "warm_profile_groups.json"))
    if not args.train:
        return
    for s, out_json, src, dst, ref, _ in pending(args.seeds, "warm_profile_s%d.json", args.runs, args.out, KEEP):
        cmd = [sys.executable, "train.py", "--langs", "18", "--seed", str(s), "--new_experts", "grouped", "--out", dst]
        run(cmd)
        with open(os.path.join(dst, "results.json")) as f:
            res = json.load(f)
        command = (" ".join(cmd[1:]) + f"  (after copying {', '.join(KEEP)} from {src} and profiling "
                   f"{src}/cpt_stage1.pt into {dst}/profile.json)")
        point = point_record(s, res["groups"], res, command, default_groups=ref["groups"],
                             default_dmoe_ppl=avg_ppl(ref)["dmoe"], results=res)
        save_json(point, out_json)
        print(f"seed {s}: {point['ppl']} MoE gain {point['moe_gain_pct']}% grouping gain {point['grouping_gain_pct']}% "
              f"(default dmoe {point['default_dmoe_ppl']})")


if __name__ == "__main__":
    main()
