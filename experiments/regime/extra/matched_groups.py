"""
Is it kinship or capacity? In the default run the profile pairs the 8 languages new to the base with each
other ({de nl} {ru uk} {ja ko} {it th} in seed 0), and random pairs beat them on exactly those languages.
If what random groups give back is capacity (a new language sharing its expert with a language the base
already knows), then pairing every new language with its MOST SIMILAR seen language should beat random
pairs too; if only kinship mattered, it should lose to the profile's pairs.

The matched groups: greedily take the new-seen pair of highest similarity (the run's own profile), remove
both, repeat; the two seen languages left form the ninth pair. dmoe is then trained as the default does
(same MoE layers, upcycled from the base, 100 + 900 steps) in a copy of the run folder whose base, cpt and
random variants are the default run's (random groups depend only on the group sizes and the seed). A
wrapper, not a train.py option: it replaces group.make_groups' groups. Resumable per seed.

    python experiments/regime/extra/matched_groups.py --runs runs/def9 --seeds 0,1,2
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
os.chdir(ROOT)
from common import save_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from points import avg_ppl, command, pending, point_record, train_with_groups  # noqa: E402
KEEP = ("config.json", "base.pt", "profile.json", "cpt_stage1.pt", "cpt.pt", "random_stage1.pt", "random.pt")


def matched_groups(S, langs, seen):
    """Each new language with its most similar seen one (greedy on the similarity), the rest in pairs."""
    S = np.asarray(S)
    new = [l for l in langs if l not in seen]
    left_new, left_seen, groups = list(new), list(seen), []
    while left_new:
        a, b = max(((a, b) for a in left_new for b in left_seen),
                   key=lambda p: S[langs.index(p[0]), langs.index(p[1])])
        groups.append(sorted([a, b]))
        left_new.remove(a), left_seen.remove(b)
    while left_seen:   # seen languages left over: pair them greedily too
        a, b = max(((a, b) for i, a in enumerate(left_seen) for b in left_seen[i + 1:]),
                   key=lambda p: S[langs.index(p[0]), langs.index(p[1])])
        groups.append(sorted([a, b]))
        left_seen.remove(a), left_seen.remove(b)
    return sorted(groups)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/def9")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/matched")
    args = p.parse_args()
    for s, out_json, src, dst, ref, prof in pending(args.seeds, "matched_groups_s%d.json", args.runs, args.out, KEEP):
        mine = matched_groups(prof["similarity"], prof["langs"], ref["base_langs"])
        cmd = ["--langs", "18", "--seed", str(s), "--new_experts", "grouped", "--out", dst]
        res = train_with_groups(mine, "matched (experiments/regime/extra/matched_groups.py)", cmd)
        how = command("experiments/regime/extra/matched_groups.py", cmd,
                      f"with the matched groups, after copying {', '.join(KEEP)} from {src}")
        point = point_record(s, mine, res, how, default_groups=ref["groups"],
                             default_dmoe_ppl=avg_ppl(ref)["dmoe"], seen_new=res["by_langs"],
                             default_seen_new=ref["by_langs"])
        save_json(point, out_json)
        print(f"seed {s}: groups {mine}\n  {point['ppl']} MoE gain {point['moe_gain_pct']}% grouping gain "
              f"{point['grouping_gain_pct']}% (default dmoe {point['default_dmoe_ppl']})", flush=True)


if __name__ == "__main__":
    main()
