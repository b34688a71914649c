"""
The next step from matched_groups.py (kinship helps the seen languages, capacity the new ones): keep the
profile's similarity where it measures kinship and give capacity where a language is unknown. The 10
languages the base saw are grouped in 5 pairs by the profile (agglomerative, the run's own similarity
restricted to them); each of the 8 new languages gets an expert of its own: 13 experts per MoE layer.
random is retrained with the same group sizes (5 pairs, 8 singletons, random languages), cpt is the
default run's. Everything else as the default (every layer MoE, 100 + 900 steps). A wrapper, not a
train.py option (train.py's groups are balanced). Resumable per seed.

    python experiments/regime/extra/own_expert.py --runs runs/def9 --seeds 0,1,2
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
os.chdir(ROOT)
import group  # noqa: E402
import train  # noqa: E402
from common import save_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP = ("base.pt", "profile.json", "cpt_stage1.pt", "cpt.pt")


def own_expert_groups(S, langs, seen):
    """The seen languages in similarity pairs (group.group_agglomerative), every new language alone."""
    idx = [langs.index(l) for l in seen]
    S_seen = np.asarray(S)[np.ix_(idx, idx)]
    pairs, _ = group.group_agglomerative(S_seen, list(seen), len(seen) // 2)   # (groups, merges)
    return pairs + [[l] for l in langs if l not in seen]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/def9")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/own_expert")
    args = p.parse_args()
    for s in [int(x) for x in args.seeds.split(",")]:
        out_json = os.path.join(HERE, f"own_expert_s{s}.json")
        if os.path.exists(out_json):
            continue
        src, dst = os.path.join(args.runs, f"s{s}"), os.path.join(args.out, f"s{s}")
        os.makedirs(dst, exist_ok=True)
        for f in KEEP:
            if not os.path.exists(os.path.join(dst, f)):
                shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
        with open(os.path.join(src, "results.json")) as f:
            ref = json.load(f)
        with open(os.path.join(src, "profile.json")) as f:
            prof = json.load(f)
        mine = own_expert_groups(prof["similarity"], prof["langs"], ref["base_langs"])
        make = group.make_groups

        def make_own(*a, **kw):
            grp = make(*a, **kw)
            grp["groups"] = mine
            grp["lang_to_expert"] = {l: e for e, g in enumerate(mine) for l in g}
            grp["method"] = "own expert per new language (experiments/regime/extra/own_expert.py)"
            return grp
        group.make_groups = make_own
        cmd = ["--langs", "18", "--seed", str(s), "--n_groups", str(len(mine)), "--out", dst]
        res = train.main(cmd)
        group.make_groups = make
        v, L = res["variants"], res["langs"]
        avg = lambda k: sum(v[k][l]["ppl"] for l in L) / len(L)
        point = {"seed": s, "groups": mine, "random_groups": res["random_groups"],
                 "ppl": {k: round(avg(k), 4) for k in ("cpt", "dmoe", "random")},
                 "default_ppl": {k: round(sum(ref["variants"][k][l]["ppl"] for l in L) / len(L), 4)
                                 for k in ("cpt", "dmoe", "random")},
                 "seen_new": res["by_langs"], "default_seen_new": ref["by_langs"],
                 "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                 "command": "python experiments/regime/extra/own_expert.py " + " ".join(sys.argv[1:])
                            + f"  (train.py {' '.join(cmd)} with these groups, after copying {', '.join(KEEP)} from {src})"}
        point["moe_gain_pct"] = round(100 * (point["ppl"]["cpt"] - point["ppl"]["dmoe"]) / point["ppl"]["cpt"], 2)
        point["grouping_gain_pct"] = round(100 * (point["ppl"]["random"] - point["ppl"]["dmoe"]) / point["ppl"]["random"], 2)
        save_json(point, out_json)
        print(f"seed {s}: groups {mine}\n  {point['ppl']} MoE gain {point['moe_gain_pct']}% grouping gain "
              f"{point['grouping_gain_pct']}% (default {point['default_ppl']})", flush=True)


if __name__ == "__main__":
    main()
