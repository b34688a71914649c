"""
The method's numbers as text pictures, for a console: the language similarity as a shaded heatmap, the
per-layer deviations as bars, and the reports that combine them (outside the method: train.py prints
group.describe(); this is the full picture).

    python analysis/console.py out                  # out/groups.json (+ out/profile.json): the group report
    python analysis/console.py out/profile.json     # a profile alone: heatmap and per-layer deviations
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import normalized  # noqa: E402
from group import title, within_similarity  # noqa: E402

SHADES = " ░▒▓█"                          # heatmap cells, low -> high
EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")  # the partial last cell of a bar


def text_heatmap(M, rows, cols, title="", lo=None, hi=None, cell=None, bounds=()):
    """M (rows, cols) as shaded text on one lo..hi scale (default: M's min..max); NaN cells are blank.
    Column labels longer than a cell are written vertically; `bounds` = indices where a new block
    (group) starts, drawn as lines (square matrices)."""
    M = np.asarray(M, dtype=float)
    lo = float(np.nanmin(M)) if lo is None else lo
    hi = float(np.nanmax(M)) if hi is None else hi
    N = normalized(M, lo, hi)  # (rows, cols) in [0, 1]
    cell = cell or (2 if len(cols) <= 60 else 1)
    lw = max(len(str(r)) for r in rows) + 1
    sep = lambda j: "│" if j in bounds else ""
    labels = [str(c) for c in cols]
    out = [title] if title else []
    if all(len(c) < cell for c in labels):
        out.append(" " * lw + "".join(f"{sep(j)}{c:<{cell}}" for j, c in enumerate(labels)))
    else:  # vertical labels, one character per line
        for k in range(max(len(c) for c in labels)):
            out.append(" " * lw + "".join(f"{sep(j)}{c[k] if k < len(c) else ' ':<{cell}}"
                                          for j, c in enumerate(labels)))
    for i, r in enumerate(rows):
        if i in bounds:
            out.append(" " * lw + "".join(("┼" if j in bounds else "") + "─" * cell for j in range(N.shape[1])))
        cells = "".join(sep(j) + (" " if np.isnan(v) else SHADES[min(len(SHADES) - 1, int(v * len(SHADES)))]) * cell
                        for j, v in enumerate(N[i]))
        out.append(f"{str(r):<{lw}}{cells}")
    out.append(f"{'':<{lw}}scale: '{SHADES[1]}' low .. '{SHADES[-1]}' high, {lo:.3g} .. {hi:.3g}")
    return "\n".join(out)


def text_bar(x, xmax, width=24):
    """A bar of x / xmax * width characters, to 1/8 of a character ('' when xmax is not positive)."""
    if not xmax > 0 or np.isnan(x):
        return ""
    eighths = int(round(min(max(x / xmax, 0.0), 1.0) * width * 8))
    return "█" * (eighths // 8) + EIGHTHS[eighths % 8]


def similarity_order(S, langs, groups=None):
    """(S (n, n) reordered, languages in that order, indices where a new group starts): languages grouped
    by `groups` (a list of lists; those in no group come last), else as given."""
    S, langs = np.asarray(S, dtype=float), list(langs)
    if not groups:
        return S, langs, set()
    order, ends = [], []
    for g in groups:
        order += [l for l in g if l in langs and l not in order]
        ends.append(len(order))
    order += [l for l in langs if l not in order]
    idx = [langs.index(l) for l in order]
    return S[np.ix_(idx, idx)], order, set(ends[:-1])


def text_similarity(S, langs, groups=None):
    """The similarity matrix as a text heatmap on the off-diagonal range (the diagonal, always 1, blank),
    ordered by group with lines between groups when groups are given."""
    S, order, bounds = similarity_order(S, langs, groups)
    M = S.copy()
    np.fill_diagonal(M, np.nan)
    title = (f"language similarity heatmap (cosine of deviation vectors{', ordered by group' if groups else ''};"
             f" diagonal blank)")
    return text_heatmap(M, order, order, title, bounds=bounds)


# -----------------------------------------------------------------------------
# the reports

def group_report(g, profile=None):
    """Human-readable report of a make_groups() result: heatmap, groups with their mean similarity,
    nearest neighbours, per-layer deviations with bars and the chosen MoE layers, repeat stability.
    `profile` (optional) adds the profiling settings and the fine-tuning losses."""
    langs, groups = g["langs"], g["groups"]
    S = np.asarray(g["similarity"], dtype=np.float64)
    n = len(langs)
    idx = {l: i for i, l in enumerate(langs)}
    out = []
    if profile and profile.get("config"):
        out.append("profile: " + ", ".join(f"{k}={v}" for k, v in profile["config"].items()))
    out.append(text_similarity(S, langs, groups))
    off = S[~np.eye(n, dtype=bool)]
    if off.size:
        out.append(f"off-diagonal similarity: mean {off.mean():.4f}, min {off.min():.4f}, max {off.max():.4f}")
    out.append("\n" + title(g))
    gsim = g.get("group_similarity") or within_similarity(S, langs, groups)
    for gi, (grp, s) in enumerate(zip(groups, gsim)):
        sim = "-" if s is None else f"{s:.4f}"
        out.append(f"  group {gi:2d} ({len(grp)}): {' '.join(grp):<40s} mean sim {sim}")
    if g.get("repeat_rand"):
        rr = g["repeat_rand"]
        out.append(f"stability: grouping redone on each repeat's similarity agrees with the final one on "
                   f"{', '.join(f'{r:.2f}' for r in rr)} of language pairs (Rand index); the repeats' groups "
                   f"agree with each other at adjusted Rand index {g['repeat_ari']:.2f}")
    out.append("\nnearest neighbour (* = same group):")
    lang_to_expert = g["lang_to_expert"]
    items = []
    for l in langs:
        i = idx[l]
        row = S[i].copy()
        row[i] = -np.inf
        j = int(np.argmax(row)) if n > 1 else i
        mark = "*" if lang_to_expert[l] == lang_to_expert[langs[j]] else " "
        items.append(f"{l:>4s} → {langs[j]:<4s}{row[j]:7.4f}{mark}")
    for r in range(0, len(items), 4):
        out.append("  " + "   ".join(items[r:r + 4]))
    D = np.asarray(g["layer_dev"], dtype=np.float64)
    Dn = normalized(D)
    A = g.get("attn_layer_dev")
    moe = set(g["moe_layers"])
    out.append(f"\nper-layer mean deviation (eps = {g['eps']}; MoE layers {sorted(moe)}):")
    out.append(f"  {'layer':>5s} {'ffn':>10s} {'':24s} {'D^':>5s} {'attn':>10s}")
    for l in range(len(D)):
        attn = f"{A[l]:10.3e} {text_bar(A[l], max(A))}" if A else ""
        out.append(f"  {l:5d} {D[l]:10.3e} {text_bar(D[l], D.max()):<24s} {Dn[l]:5.2f} {attn}"
                   f"{'  <- MoE' if l in moe else ''}".rstrip())
    if profile and profile.get("loss"):
        out.append("\nprofiling fine-tune loss (first step -> last step):")
        items = [f"{l:>4s} {a:6.3f}->{b:6.3f}" for l, (a, b) in profile["loss"].items()]
        for r in range(0, len(items), 4):
            out.append("  " + "   ".join(items[r:r + 4]))
    return "\n".join(out)


def profile_summary(prof):
    """Short text summary: similarity heatmap (language order as given) and per-layer mean deviations."""
    langs = prof["langs"]
    lines = [text_similarity(prof["similarity"], langs)]
    if prof.get("repeat_corr") is not None:
        lines.append(f"repeat stability: mean correlation of off-diagonal similarities between repeats "
                     f"{prof['repeat_corr']:.3f}")
    D = np.mean([prof["ffn_dev"][l] for l in langs], axis=0)
    A = np.mean([prof["attn_dev"][l] for l in langs], axis=0)
    lines.append(f"per-layer mean deviation (vector layers {prof['vector_layers']}):")
    for l in range(len(D)):
        lines.append(f"  layer {l:3d}  ffn {D[l]:.3e} {text_bar(D[l], D.max()):<24s} attn {A[l]:.3e}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        raise SystemExit("usage: python analysis/console.py RUN_DIR | groups.json | profile.json")
    path = argv[0]
    if os.path.isdir(path):   # a run folder: its groups.json, else (a run stopped before grouping) its profile
        path = next((p for p in (os.path.join(path, n) for n in ("groups.json", "profile.json")) if os.path.isfile(p)),
                    os.path.join(path, "groups.json"))
    try:
        with open(path) as f:
            g = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a readable groups.json or profile.json ({e.__class__.__name__}); "
                         f"give a run folder, a groups.json or a profile.json")
    kind = ("groups" if isinstance(g, dict) and {"groups", "langs", "similarity"} <= g.keys() else
            "profile" if isinstance(g, dict) and {"langs", "similarity", "ffn_dev"} <= g.keys() else None)
    if kind is None:   # e.g. a results.json or config.json
        raise SystemExit(f"error: {path} is neither a groups.json nor a profile.json; give a run folder, a "
                         f"groups.json or a profile.json")
    if kind == "profile":
        print(profile_summary(g))
        return
    prof_path = os.path.join(os.path.dirname(path), "profile.json")
    prof = json.load(open(prof_path)) if os.path.isfile(prof_path) else None
    print(group_report(g, prof if prof and prof.get("langs") == g["langs"] else None))


if __name__ == "__main__":
    main(sys.argv[1:])
