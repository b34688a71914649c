"""
The paper's situation (--base_langs auto: the base on BLOOM's 10 languages, every later stage on all 18),
point by point: experiments/regime/<point>_s<seed>.json are copies of the runs' results.json with the
command that made them. This prints, per point, the mean over its seeds of the average perplexity under
the learned router and forced to the group's expert, and the two gains the issue asks for:

    MoE gain       (cpt - dmoe) / cpt          dmoe against the dense model on the same batches
    grouping gain  (random - dmoe) / random    similarity groups against random groups of the same sizes

    python experiments/regime/table.py          # the table, from the JSON files alone
"""
import glob
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from eval import summarize  # noqa: E402


def main():
    points = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*_s[0-9]*.json"))):
        point, seed = re.fullmatch(r"(.+)_s(\d+)\.json", os.path.basename(path)).groups()
        with open(path) as f:
            points.setdefault(point, {})[int(seed)] = json.load(f)
    print(f"{'point':<10} {'seeds':<7} {'cpt':>6} {'dmoe':>6} {'random':>6} {'MoE gain':>14} {'group gain':>14} "
          f"{'forced gain':>14} {'new-lang group gain':>20}")
    for point, runs in points.items():
        def ppl(res, kind, v, part=None):
            if part:
                return res["by_langs"][part][kind][v]
            return summarize(res[kind][v])["ppl"]
        rows = {k: [] for k in ("cpt", "dmoe", "random", "moe", "grp", "fgrp", "new")}
        for res in runs.values():
            c, d, r = (ppl(res, "variants", v) for v in ("cpt", "dmoe", "random"))
            fd, fr = (ppl(res, "forced_group", v) for v in ("dmoe", "random"))
            nd, nr = (ppl(res, "variants", v, "new") for v in ("dmoe", "random"))
            for k, x in zip(rows, (c, d, r, 100 * (c - d) / c, 100 * (r - d) / r, 100 * (fr - fd) / fr, 100 * (nr - nd) / nr)):
                rows[k].append(x)
        pm = lambda xs: f"{np.mean(xs):+.2f}% ± {np.std(xs, ddof=1):.2f}" if len(xs) > 1 else f"{xs[0]:+.2f}%"
        print(f"{point:<10} {','.join(map(str, runs)):<7} {np.mean(rows['cpt']):6.2f} {np.mean(rows['dmoe']):6.2f} "
              f"{np.mean(rows['random']):6.2f} {pm(rows['moe']):>14} {pm(rows['grp']):>14} {pm(rows['fgrp']):>14} "
              f"{pm(rows['new']):>20}")
    print("gains: positive = dmoe better; learned routing unless 'forced'; new-lang: the 8 languages the base never saw")


if __name__ == "__main__":
    main()
