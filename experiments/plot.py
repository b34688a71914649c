"""
The sweep's table and plot, redrawn from experiments/sweep/<axis>.json without retraining.

    python experiments/plot.py                      # the markdown table (docs/EXPERIMENTS.md §7), every axis swept
    python experiments/plot.py --png experiments/sweep/grouping_gain.png   # + the plot (needs matplotlib)

Grouping gain = (random - dmoe) / random average perplexity, in %: positive when the similarity groups
beat random groups of the same sizes. "learned": the router decides (as trained); "forced": every language
is sent to its own group's expert. Mean over seeds, and the number of seeds where dmoe beat random by 2%.
"""
import argparse
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def gains(point):
    """Per seed: grouping gain (learned, forced) in %, and dmoe vs cpt in % (negative = dmoe better)."""
    out = []
    for seed, run in sorted(point["seeds"].items()):
        p = run["avg_ppl"]
        out.append({"seed": seed,
                    "learned": 100 * (p["random"] - p["dmoe"]) / p["random"],
                    "forced": 100 * (p["random forced"] - p["dmoe forced"]) / p["random forced"],
                    "dmoe_vs_cpt": 100 * (p["dmoe"] / p["cpt"] - 1) if "cpt" in p else float("nan"),
                    "tpep": run["tokens_per_expert_param"], "minutes": run.get("minutes")})
    return out


def load(folder=os.path.join(HERE, "sweep")):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(folder, "*.json")))]


def table(sweeps):
    lines = ["| axis | point | seeds | tokens / expert param | cpt | dmoe | random | gain learned | gain forced "
             "| dmoe ≥ 2% better (learned) | dmoe vs cpt | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for sw in sweeps:
        for pt in sw["points"]:
            g = gains(pt)
            ppl = lambda v: np.mean([r["avg_ppl"].get(v, np.nan) for r in pt["seeds"].values()])   # noqa: E731 (nan: not run)
            sd = lambda k: f"{np.mean([x[k] for x in g]):+.2f}% ± {np.std([x[k] for x in g]):.2f}"  # noqa: E731
            mins = [x["minutes"] for x in g if x["minutes"]]
            lines.append(f"| {sw['axis']} | {pt['name']} | {len(g)} | {g[0]['tpep']:.0f} | {ppl('cpt'):.2f} | "
                         f"{ppl('dmoe'):.2f} | {ppl('random'):.2f} | {sd('learned')} | {sd('forced')} | "
                         f"{sum(x['learned'] >= 2 for x in g)}/{len(g)} | {sd('dmoe_vs_cpt')} | "
                         f"{max(mins) if mins else '-'} |")
    return "\n".join(lines)


def plot(sweeps, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("learned", "forced")):
        for i, sw in enumerate(sweeps):
            xs, ys, es = [], [], []
            for pt in sw["points"]:
                g = gains(pt)
                xs.append(g[0]["tpep"])
                ys.append(np.mean([x[kind] for x in g]))
                es.append(np.std([x[kind] for x in g]))
                ax.scatter([x["tpep"] for x in g], [x[kind] for x in g], s=8, color=f"C{i}", alpha=0.4)
                ax.annotate(pt["name"], (xs[-1], ys[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.errorbar(xs, ys, yerr=es, marker="o", color=f"C{i}", label=sw["axis"], capsize=3)
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(2, color="gray", lw=0.8, ls="--")
        xs_all = [x["tpep"] for sw in sweeps for pt in sw["points"] for x in gains(pt)]
        if max(xs_all) > 10 * min(xs_all):   # a log scale only where the points span a decade
            ax.set_xscale("log")
        ax.set_xlabel("tokens per expert parameter")
        ax.set_title(f"{kind} routing")
    axes[0].set_ylabel("grouping gain: (random - dmoe) / random, %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--png", default="")
    args = p.parse_args(argv)
    sweeps = load()
    if not sweeps:
        raise SystemExit("error: no experiments/sweep/*.json yet; run python experiments/sweep.py AXIS first")
    print(table(sweeps))
    if args.png:
        plot(sweeps, args.png)


if __name__ == "__main__":
    main()
