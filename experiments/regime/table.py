"""
The paper's situation (--base_langs auto: the base on BLOOM's 10 languages, every later stage on all 18),
point by point: experiments/regime/<point>_s<seed>.json are copies of the runs' results.json with the
command that made them. This prints, per point, the mean over its seeds of the average perplexity under
the learned router and forced to the group's expert, and the two gains the issue asks for:

    MoE gain       (cpt - dmoe) / cpt          dmoe against the dense model on the same batches
    grouping gain  (random - dmoe) / random    similarity groups against random groups of the same sizes

    python experiments/regime/table.py          # the table, from the JSON files alone
    python experiments/regime/table.py --map    # + every seed of every point on the (MoE gain, grouping gain)
                                                #   plane, as text (docs/EXPERIMENTS.md §5 shows it)
    python experiments/regime/table.py --png experiments/regime/map.png   # the same plane, learned and
                                                #   forced routing, as a picture (needs matplotlib)
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


def text_map(dots, width=64, height=21):
    """Every (x = MoE gain, y = grouping gain, mark) on a character grid; the target corner is x >= 3, y >= 1."""
    xs, ys = [d[0] for d in dots] + [0, 3], [d[1] for d in dots] + [0, 1]
    x0, x1, y0, y1 = min(xs) - 0.5, max(xs) + 0.5, min(ys) - 0.5, max(ys) + 0.5
    col = lambda x: round((x - x0) / (x1 - x0) * (width - 1))
    row = lambda y: round((y1 - y) / (y1 - y0) * (height - 1))
    grid = [[" "] * width for _ in range(height)]
    for r in range(height):
        for c in range(width):
            if c >= col(3) and r <= row(1):
                grid[r][c] = "."                                   # the target: >= 3% and >= 1%
    for c in range(width):
        grid[row(0)][c] = "-"
    for r in range(height):
        grid[r][col(0)] = "|"
    for x, y, mark in dots:
        grid[row(y)][col(x)] = mark
    lines = [f"grouping gain (learned) from {y0:+.1f}% (bottom) to {y1:+.1f}% (top); '.' = the target (MoE >= 3%, grouping >= 1%)"]
    lines += ["".join(r) for r in grid]
    lines.append(f"MoE gain from {x0:+.1f}% (left) to {x1:+.1f}% (right); | and - are 0")
    return lines


def png_map(seeds_xyf, path):
    """Two panels, MoE gain (x) against the grouping gain under the learned router and forced to the group
    expert (y): every seed a small dot, every point's mean a labelled marker, the target corner shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, col, title in ((axes[0], 1, "learned routing"), (axes[1], 2, "forced to the group's expert")):
        for i, (point, xyf) in enumerate(seeds_xyf.items()):
            x, y = np.array([t[0] for t in xyf]), np.array([t[col] for t in xyf])
            c = plt.cm.tab20(i % 20)
            ax.scatter(x, y, s=12, color=c, alpha=0.6)
            ax.scatter([x.mean()], [y.mean()], s=60, color=c, edgecolor="k", zorder=3)
            ax.annotate(f"{point} ({len(x)})", (x.mean(), y.mean()), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        if col == 1:
            ax.fill_between([3, ax.get_xlim()[1]], 1, max(1.5, ax.get_ylim()[1]), color="green", alpha=0.1,
                            label="target: MoE gain >= 3%, grouping gain >= 1%")
            ax.legend(loc="lower right", fontsize=7)
        ax.set(xlabel="MoE gain (cpt - dmoe) / cpt, %", ylabel="grouping gain (random - dmoe) / random, %",
               title=f"grouping gain, {title}")
    fig.suptitle("The paper's situation: every point's seeds (dots) and mean (labelled; seeds in brackets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    points = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*_s[0-9]*.json"))):
        point, seed = re.fullmatch(r"(.+)_s(\d+)\.json", os.path.basename(path)).groups()
        with open(path) as f:
            points.setdefault(point, {})[int(seed)] = json.load(f)
    w = max(map(len, points), default=5)   # the widest point name
    print(f"{'point':<{w}} {'seeds':<7} {'cpt':>6} {'dmoe':>6} {'random':>6} {'MoE gain':>14} {'group gain':>14} "
          f"{'forced gain':>14} {'new-lang group gain':>20}")
    seeds_xy = {}
    for point, runs in points.items():
        def ppl(res, kind, v, part=None):
            if part:   # a base of every language has no new ones
                return res.get("by_langs", {}).get(part, {}).get(kind, {}).get(v, float("nan"))
            return summarize(res[kind][v])["ppl"]
        rows = {k: [] for k in ("cpt", "dmoe", "random", "moe", "grp", "fgrp", "new")}
        for res in runs.values():
            c, d, r = (ppl(res, "variants", v) for v in ("cpt", "dmoe", "random"))
            fd, fr = (ppl(res, "forced_group", v) for v in ("dmoe", "random"))
            nd, nr = (ppl(res, "variants", v, "new") for v in ("dmoe", "random"))
            for k, x in zip(rows, (c, d, r, 100 * (c - d) / c, 100 * (r - d) / r, 100 * (fr - fd) / fr, 100 * (nr - nd) / nr)):
                rows[k].append(x)
        seeds_xy[point] = list(zip(rows["moe"], rows["grp"], rows["fgrp"]))
        pm = lambda xs: ("–" if np.isnan(xs).any() else f"{np.mean(xs):+.2f}% ± {np.std(xs, ddof=1):.2f}"
                         if len(xs) > 1 else f"{xs[0]:+.2f}%")
        print(f"{point:<{w}} {','.join(map(str, runs)):<7} {np.mean(rows['cpt']):6.2f} {np.mean(rows['dmoe']):6.2f} "
              f"{np.mean(rows['random']):6.2f} {pm(rows['moe']):>14} {pm(rows['grp']):>14} {pm(rows['fgrp']):>14} "
              f"{pm(rows['new']):>20}")
    print("gains: positive = dmoe better; learned routing unless 'forced'; new-lang: the languages the base never saw (8 with its 10 BLOOM languages)")
    if "--map" in sys.argv[1:]:
        marks = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        dots, legend = [], []
        for mark, (point, xy) in zip(marks, seeds_xy.items()):
            dots += [(x, y, mark) for x, y, _ in xy]
            legend.append(f"{mark} {point} ({len(xy)} seed{'s' * (len(xy) > 1)})")
        print()
        print("\n".join(text_map(dots) + ["", "   ".join(legend)]))
    if "--png" in sys.argv[1:]:
        i = sys.argv.index("--png")
        if i + 1 >= len(sys.argv):
            raise SystemExit("error: --png needs a file name, e.g. --png experiments/regime/map.png")
        png_map(seeds_xy, sys.argv[i + 1])


if __name__ == "__main__":
    main()
