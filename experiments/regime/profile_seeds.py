"""
Are the regime's groups a measurement? The profile of each seed's base (--base_langs auto), with 32 and
128 windows, grouped into 6 and 9, on the raw and on the centred similarity (the deviations minus their
mean over languages): how the seeds' groups agree (pairwise ARI) and how many groups hold only languages
the base never saw. Lands experiments/regime/profile_seeds.json.

    # the profiles (1 thread, ~20 s each at 32 windows, ~70 s at 128), one per seed's base:
    for W in 32 128; do for s in 0 1 2; do
      python profile.py --ckpt runs/regime/_shared/s$s/base.pt --windows $W \\
          --vectors runs/pstab/v_s${s}_w$W.npy --out runs/pstab/p_s${s}_w$W.json; done; done
    python experiments/regime/profile_seeds.py runs/pstab
"""
import itertools
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from config import BLOOM_LANGS  # noqa: E402  (the base's languages under --base_langs auto)
from group import adjusted_rand_index, cosine_similarity, group_languages  # noqa: E402


def main(folder):
    out = []
    for w in (32, 128):
        for center in (False, True):
            for k in (6, 9):
                groups = {}
                for s in (0, 1, 2):
                    with open(os.path.join(folder, f"p_s{s}_w{w}.json")) as f:
                        langs = json.load(f)["langs"]
                    V = np.load(os.path.join(folder, f"v_s{s}_w{w}.npy"))
                    groups[s] = group_languages(cosine_similarity(V - V.mean(0) if center else V), langs, k)[0]
                ari = [adjusted_rand_index(groups[a], groups[b]) for a, b in itertools.combinations(groups, 2)]
                all_new = [sum(not set(g) & set(BLOOM_LANGS) for g in G) for G in groups.values()]
                out.append({"windows": w, "center": center, "k": k, "seed_ari": [round(a, 3) for a in ari],
                            "all_new_groups": all_new, "groups": groups})
                print(f"windows {w:3d} center {center!s:5} k {k}: seed ARI {' '.join(f'{a:.2f}' for a in ari)}"
                      f" | groups of new languages only {all_new}")
    with open(os.path.join(HERE, "profile_seeds.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pstab")
