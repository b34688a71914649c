"""
What the wrappers in this folder share: each one reruns some stages of the default runs (runs/def9/sS)
with other groups or another profile, copying the stages it can reuse, and lands one JSON per seed.
"""
import json
import os
import shlex
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
import group  # noqa: E402
import train  # noqa: E402

VARIANTS = ("cpt", "dmoe", "random")


def copy_run(src, dst, files):
    """The default run's finished stages that a point shares, copied once (train.py then skips them).
    Returns that run's results.json and profile.json."""
    os.makedirs(dst, exist_ok=True)
    for f in files:
        if not os.path.exists(os.path.join(dst, f)):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
    with open(os.path.join(src, "results.json")) as f, open(os.path.join(src, "profile.json")) as g:
        return json.load(f), json.load(g)


def pending(seeds, json_name, runs, out, files):
    """The seeds (a "0,1,2" string) whose point has not landed yet: (seed, its JSON path json_name % seed in
    this folder, the default run's folder, the point's folder, that run's results.json and profile.json),
    with `files` copied over (copy_run). A landed JSON is a finished seed: the sweep resumes seed by seed."""
    here = os.path.dirname(os.path.abspath(__file__))
    for s in [int(x) for x in seeds.split(",")]:
        out_json = os.path.join(here, json_name % s)
        if os.path.exists(out_json):
            continue
        src, dst = os.path.join(runs, f"s{s}"), os.path.join(out, f"s{s}")
        yield (s, out_json, src, dst) + copy_run(src, dst, files)


def command(script, argv, what):
    """The command line that made a point (the wrapper's, shell-quoted) and what it ran, for its JSON."""
    return f"python {script} {shlex.join(sys.argv[1:])}  (train.py {' '.join(argv)} {what})"


def train_with_groups(groups, method, argv):
    """train.main(argv) with `groups` in place of the profile's (the MoE layers and the rest as make_groups
    computes them). Returns the run's results."""
    make = group.make_groups

    def make_these(*a, **kw):
        grp = make(*a, **kw)
        grp["groups"] = groups
        grp["lang_to_expert"] = {l: e for e, g in enumerate(groups) for l in g}
        grp["method"] = method
        return grp
    group.make_groups = make_these
    try:
        return train.main(argv)
    finally:
        group.make_groups = make


def avg_ppl(results):
    """{variant: average perplexity over the run's languages}, rounded as the JSON keeps it."""
    L = results["langs"]
    return {k: round(sum(results["variants"][k][l]["ppl"] for l in L) / len(L), 4) for k in VARIANTS}


def point_record(seed, groups, res, command, **fields):
    """One seed of a point: its groups, average perplexities, `fields`, the thread count, the command, and
    the two gains (MoE: dmoe against cpt; grouping: dmoe against random groups), in %. res: the run's results."""
    ppl = avg_ppl(res)
    return {"seed": seed, "groups": groups, "ppl": ppl, **fields,
            "threads": os.environ.get("OMP_NUM_THREADS", "all"), "command": command,
            "moe_gain_pct": round(100 * (ppl["cpt"] - ppl["dmoe"]) / ppl["cpt"], 2),
            "grouping_gain_pct": round(100 * (ppl["random"] - ppl["dmoe"]) / ppl["random"], 2)}
