"""
The next step from matched_groups.py (kinship helps the seen languages, capacity the new ones): keep the
profile's similarity where it measures kinship and give capacity where a language is unknown. The 10
languages the base saw are grouped in 5 pairs by the profile (agglomerative, the run's own similarity
restricted to them); each of the 8 new languages gets an expert of its own: 13 experts per MoE layer.
random is retrained with the same group sizes (5 pairs, 8 singletons, random languages), cpt is the
default run's. Everything else as the default (every layer MoE, 100 + 900 steps). Measured as a wrapper
over the grouped default's runs (runs/def9, `--new_experts grouped`), reusing their base and cpt; it
became train.py's default (`--new_experts own`), whose own runs give the same groups and numbers
(docs/EXPERIMENTS.md §5). Resumable per seed.

    python experiments/regime/extra/own_expert.py --runs runs/def9 --seeds 0,1,2
    python experiments/regime/extra/own_expert.py --runs runs/def9 --seeds 0,1,2 --tag prior03 \
        --train_args "--router_alpha2 0.3"      # + train.py settings (cpt must be unaffected by them)
    OMP_NUM_THREADS=1 python experiments/regime/extra/own_expert.py --runs runs/regime/k9_after2 --seeds 0 \
        --tag after2 --train_args "--stage1_steps 200 --stage2_steps 1800"   # twice the steps (that point's cpt)
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
os.chdir(ROOT)
import group  # noqa: E402
from common import save_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from points import avg_ppl, command, pending, point_record, train_with_groups  # noqa: E402

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
    p.add_argument("--out", default=None, help="default: runs/own_expert[_TAG]")
    p.add_argument("--tag", default="", help="a name for a variant of the point (its JSON: own_expert_TAG_sS.json)")
    p.add_argument("--train_args", default="", help="more train.py settings, e.g. \"--router_alpha2 0.3\"")
    args = p.parse_args()
    name = "own_expert" + (f"_{args.tag}" if args.tag else "")
    args.out = args.out or os.path.join("runs", name)
    for s, out_json, src, dst, ref, prof in pending(args.seeds, name + "_s%d.json", args.runs, args.out, KEEP):
        mine = own_expert_groups(prof["similarity"], prof["langs"], ref["base_langs"])
        cmd = ["--langs", "18", "--seed", str(s), "--n_groups", str(len(mine)), "--out", dst] + args.train_args.split()
        res = train_with_groups(mine, "own expert per new language (experiments/regime/extra/own_expert.py)", cmd)
        how = command("experiments/regime/extra/own_expert.py", cmd,
                      f"with these groups, after copying {', '.join(KEEP)} from {src}")
        point = point_record(s, mine, res, how, random_groups=res["random_groups"], default_ppl=avg_ppl(ref),
                             seen_new=res["by_langs"], default_seen_new=ref["by_langs"])
        save_json(point, out_json)
        print(f"seed {s}: groups {mine}\n  {point['ppl']} MoE gain {point['moe_gain_pct']}% grouping gain "
              f"{point['grouping_gain_pct']}% (default {point['default_ppl']})", flush=True)


if __name__ == "__main__":
    main()
