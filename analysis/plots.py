"""
Pictures of a nanoDMoE run and the text they fall back to.

    deviation.png   per-language FFN vs attention deviation per layer       (profile.json, docs/METHOD.md §2)
    similarity.png  language similarity, ordered by group                    (profile.json / groups.json, §4)
    curves.png      train and val loss of every stage                        (RUN/logs/<stage>.jsonl, §6)
    routing_V.png   where the learned router of variant V sends each language (analysis/report.py routing_matrix, §8)

matplotlib is optional: it is imported inside the picture functions only, and without it every picture
prints the same information as text. The text renderers (shaded heatmaps, sparklines, bars) need only
numpy; they live in analysis/console.py with the console reports.
"""

import glob
import json
import math
import os

import numpy as np

from analysis.console import similarity_order, text_bar, text_heatmap, text_similarity  # noqa: F401 (re-exported)
from common import normalized

SPARKS = "▁▂▃▄▅▆▇█"                       # sparklines
VARIANT_ORDER = ["base", "cpt", "dmoe", "random", "all_layers"]  # train.py's variants, in pipeline order


def variant_rank(name):
    """Sort key: train.py's variants first, in pipeline order, a stage-1 name before its variant."""
    base = name[:-len("_stage1")] if name.endswith("_stage1") else name
    known = VARIANT_ORDER.index(base) if base in VARIANT_ORDER else len(VARIANT_ORDER)
    return known, base, 0 if name != base else 1

# -----------------------------------------------------------------------------
# text renderers


def sparkline(values, lo=None, hi=None):
    """One character per value on a lo..hi scale (default: the values' own min..max); NaN blank."""
    return "".join(" " if np.isnan(v) else SPARKS[min(len(SPARKS) - 1, int(v * len(SPARKS)))]
                   for v in normalized(values, lo, hi))


# -----------------------------------------------------------------------------
# parameter deviation and similarity (profile.json, groups.json)


def _pyplot():
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def text_deviation(profile, moe_layers=None):
    """Per language: sparklines of the FFN and attention deviation per layer; then the means over
    languages with the normalised FFN deviation D̂ (docs/METHOD.md §3) as bars."""
    langs = profile["langs"]
    ffn = np.array([profile["ffn_dev"][l] for l in langs], dtype=float)   # (n_langs, L)
    attn = np.array([profile["attn_dev"][l] for l in langs], dtype=float)  # (n_langs, L)
    lw = max(5, max(len(l) for l in langs) + 1)
    L = ffn.shape[1]
    cw = max(L, 4) + 2
    out = [f"per-layer parameter deviation, layers 0..{L - 1} left to right (one min..max scale per kind)",
           f"{'lang':<{lw}}{'ffn':<{cw}}{'attn':<{cw}}ffn/attn (mean)"]
    for i, l in enumerate(langs):
        ratio = np.nanmean(ffn[i]) / max(np.nanmean(attn[i]), 1e-12)
        out.append(f"{l:<{lw}}{sparkline(ffn[i], np.nanmin(ffn), np.nanmax(ffn)):<{cw}}"
                   f"{sparkline(attn[i], np.nanmin(attn), np.nanmax(attn)):<{cw}}{ratio:.2f}")
    D, A = ffn.mean(0), attn.mean(0)  # (L,) each
    Dn = normalized(D)
    out += ["", "mean over languages (the normalised FFN deviation D̂ is what layer selection thresholds):",
            f"{'layer':>5} {'ffn':>10} {'attn':>10} {'D^':>5}"]
    for j in range(L):
        moe = "  MoE" if moe_layers and j in moe_layers else ""
        out.append(f"{j:>5} {D[j]:>10.4g} {A[j]:>10.4g} {Dn[j]:>5.2f} {text_bar(Dn[j], 1.0, 20):<20}{moe}")
    return "\n".join(out)


def plot_deviation(profile, out_path, moe_layers=None):
    """Grid of small bar charts, one per language: FFN vs attention deviation per layer (the layers
    that became MoE, when given, are shaded)."""
    plt = _pyplot()
    if plt is None:
        print(text_deviation(profile, moe_layers))
        return None
    langs = profile["langs"]
    n = len(langs)
    ncol = min(6, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 1.9 * nrow + 0.6), squeeze=False, sharex=True,
                             layout="constrained")
    for i, l in enumerate(langs):
        ax = axes[i // ncol][i % ncol]
        ffn, attn = np.asarray(profile["ffn_dev"][l]), np.asarray(profile["attn_dev"][l])
        x = np.arange(len(ffn))
        for m in moe_layers or []:
            ax.axvspan(m - 0.5, m + 0.5, color="0.9", zorder=0)
        ax.bar(x - 0.2, ffn, 0.4, label="FFN", color="tab:blue")
        ax.bar(x + 0.2, attn, 0.4, label="attention", color="tab:orange")
        ax.set_title(l, fontsize=9)
        ax.set_xticks(x if len(x) <= 12 else x[::max(1, len(x) // 8)])
        ax.tick_params(labelsize=7)
    for j in range(n, nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", fontsize=8, ncol=2)
    fig.suptitle("parameter deviation per layer (FFN vs attention)" + ("; grey = MoE layers" if moe_layers else ""),
                 fontsize=10)
    fig.supxlabel("layer", fontsize=9)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_similarity(profile, groups=None, out_path="similarity.png"):
    """Heatmap of the language similarity (cosine of deviation vectors), languages ordered by group.
    The similarity comes from profile.json, else from groups.json (which holds a copy)."""
    src = profile if profile is not None and "similarity" in profile else groups
    glist = groups.get("groups") if groups else None
    plt = _pyplot()
    if plt is None:
        print(text_similarity(src["similarity"], src["langs"], glist))
        return None
    S, order, bounds = similarity_order(src["similarity"], src["langs"], glist)
    n = len(order)
    M = S.copy()
    np.fill_diagonal(M, np.nan)
    vmin, vmax = float(np.nanmin(M)), float(np.nanmax(M))  # the off-diagonal range (the diagonal is 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.32 * n + 2), max(3.5, 0.32 * n + 1.5)))
    im = ax.imshow(M, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n), order, rotation=90, fontsize=7)
    ax.set_yticks(range(n), order, fontsize=7)
    for b in bounds:
        ax.axhline(b - 0.5, color="white", lw=1.2)
        ax.axvline(b - 0.5, color="white", lw=1.2)
    if n <= 12:  # small enough to print the numbers
        for i in range(n):
            for j in range(n):
                if i != j:
                    ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if S[i, j] < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("language similarity (cosine of deviation vectors)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path

# -----------------------------------------------------------------------------
# training curves (RUN/logs/<stage>.jsonl)


def read_logs(run_dir):
    """{stage: [records]} from train.py's RUN/logs/<stage>.jsonl: one JSON object per line with step,
    tokens, loss, lr and optional val_loss, router_ce, balance, mfu. A line that is not a JSON object
    (the half-written last line of a log that train.py is still writing) is skipped."""
    logs = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "*.jsonl"))):
        recs = []
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    recs.append(rec)
        if recs:
            logs[os.path.splitext(os.path.basename(path))[0]] = recs
    return logs


def merge_stages(logs):
    """Append each MoE variant's stage 2 log to its stage 1 log (<v>_stage1 + <v>), shifting steps and
    tokens so that the curve continues; the dense cpt run covers the same span in one log."""
    out = {}
    for v, recs in logs.items():
        if v.endswith("_stage1") and v[:-len("_stage1")] in logs:
            continue
        s1 = logs.get(v + "_stage1")
        if s1:
            step, tokens = s1[-1]["step"], s1[-1]["tokens"]
            recs = s1 + [dict(r, step=r["step"] + step, tokens=r["tokens"] + tokens) for r in recs]
        out[v] = recs
    return {v: out[v] for v in sorted(out, key=variant_rank)}


def _resample(v, n=40):
    """At most n points: the means of n equal bins (a sparkline of any log length has the same width)."""
    v = np.asarray(v, dtype=float)
    return v if len(v) <= n else np.array([b.mean() for b in np.array_split(v, n)])


def text_curves(logs):
    """Sparklines of the binned train loss; the variants after base share one scale, base has its own."""
    nw = max(8, max(len(v) for v in logs) + 1)
    binned = {v: _resample([r["loss"] for r in recs]) for v, recs in logs.items()}
    shared = [b for v, b in binned.items() if v != "base"]
    lo = min((b.min() for b in shared), default=None)
    hi = max((b.max() for b in shared), default=None)
    out = ["training curves: train loss (binned means; variants after base on one scale), "
           "mean of the last 10% of train steps, best val loss"]
    for v, recs in logs.items():
        train = [r["loss"] for r in recs]
        val = [r["val_loss"] for r in recs if "val_loss" in r]
        spark = sparkline(binned[v]) if v == "base" else sparkline(binned[v], lo, hi)
        tail = np.mean(train[-max(1, len(train) // 10):])
        out.append(f"{v:<{nw}}{spark:<41} train {tail:>6.3f}  val {f'{min(val):.3f}' if val else '-':>6}  "
                   f"(tokens {recs[-1]['tokens']:,.0f})")
    return "\n".join(out)


def _smooth(v, n):
    """Trailing moving average over n points (the per-step train loss is noisy)."""
    c = np.cumsum(np.insert(np.asarray(v, dtype=float), 0, 0.0))
    return [(c[i + 1] - c[max(0, i + 1 - n)]) / (i + 1 - max(0, i + 1 - n)) for i in range(len(v))]


def plot_curves(run_dir, out_path="curves.png"):
    """Train loss (smoothed line) and val loss (markers) of every variant of a run directory vs tokens.
    The dense base run gets its own panel: the variants start from it with matched tokens."""
    logs = merge_stages(read_logs(run_dir))
    if not logs:
        print(f"no training logs under {os.path.join(run_dir, 'logs')}")
        return None
    plt = _pyplot()
    if plt is None:
        print(text_curves(logs))
        return None
    after = {v: r for v, r in logs.items() if v != "base"}
    panels = [{"base": logs["base"]}, after] if "base" in logs and after else [logs]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 4 * len(panels), 4.5), squeeze=False)
    colors = {v: f"C{i % 10}" for i, v in enumerate(logs)}
    for ax, panel in zip(axes[0], panels):
        for v, recs in panel.items():
            ax.plot([r["tokens"] for r in recs], _smooth([r["loss"] for r in recs], max(1, len(recs) // 25)),
                    color=colors[v], lw=1.2, label=f"{v} train")
            val = [(r["tokens"], r["val_loss"]) for r in recs if "val_loss" in r]
            if val:
                ax.plot(*zip(*val), "o--", color=colors[v], ms=3, lw=0.8, label=f"{v} val")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("dense base" if list(panel) == ["base"] else "after base (matched tokens)" if "base" in logs
                     else "training", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path

# -----------------------------------------------------------------------------
# routing (analysis/report.py routing_matrix)


def routing_view(rm):
    """(matrix, own-group share, load, load cv, label) of a routing_matrix result to show: the slot
    shares, or the first choices when top_k >= E (then every token uses every expert and the slot shares
    are uniform by construction)."""
    E = rm["matrix"].shape[-1]
    if rm["top_k"] >= E:
        return (rm["top1"], rm["own_group_top1"], rm["load_top1"], rm["load_top1_cv"],
                f"first-choice share (top_k={rm['top_k']} >= E={E})")
    return rm["matrix"], rm["own_group_share"], rm["load"], rm["load_cv"], "share of token-slots"


def plot_routing(rm, out_path="routing.png", lang_to_expert=None, name=""):
    """Heatmap per MoE layer: share of each language's tokens per expert (learned routing); a box marks
    the language's group expert."""
    langs = rm["langs"]
    M, _, _, load_cv, label = routing_view(rm)  # M (n_moe, n_langs, E)
    E = M.shape[-1]
    lang_to_expert = lang_to_expert or {}
    plt = _pyplot()
    if plt is None:
        rows = [l if lang_to_expert.get(l) is None else f"{l} g{lang_to_expert[l]}" for l in langs]
        for k, layer in enumerate(rm["layers"]):
            print(text_heatmap(M[k], rows, [str(e) for e in range(E)], lo=0, hi=float(M[k].max()), cell=3,
                               title=f"routing{' of ' + name if name else ''}, layer {layer}: {label} "
                                     f"(rows: languages, columns: experts)"))
        return None
    n = len(rm["layers"])
    fig, axes = plt.subplots(1, n, figsize=(max(5.5, 1.5 + 0.45 * E * n + 1.0 * n), 1.8 + 0.28 * len(langs)),
                             squeeze=False, layout="constrained")
    for k, layer in enumerate(rm["layers"]):
        ax = axes[0][k]
        im = ax.imshow(M[k], cmap="magma", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(E), [str(e) for e in range(E)], fontsize=7)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        for i, l in enumerate(langs):
            if lang_to_expert.get(l) is not None:
                ax.add_patch(plt.Rectangle((lang_to_expert[l] - 0.5, i - 0.5), 1, 1, fill=False, ec="cyan", lw=1))
        ax.set_title(f"layer {layer} (load cv {load_cv[k]:.2f})", fontsize=8)
        ax.set_xlabel("expert", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"{name + ': ' if name else ''}learned routing per language, {label}\n"
                 f"(box = the language's group expert)", fontsize=9)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path

# -----------------------------------------------------------------------------
# every picture of a run


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_pictures(out_dir, run_dir, routings=None, profile_path=None, groups_path=None):
    """Every picture the run directory allows (PNGs in out_dir, or text on stdout without matplotlib):
    deviation and similarity from profile.json / groups.json (default: in run_dir), the training curves,
    and one routing heatmap per {variant: (routing_matrix result, lang_to_expert)}. -> written paths."""
    os.makedirs(out_dir, exist_ok=True)
    prof = _read_json(profile_path or os.path.join(run_dir, "profile.json"))
    grp = _read_json(groups_path or os.path.join(run_dir, "groups.json"))
    written = []
    if prof is not None and "ffn_dev" in prof:
        written.append(plot_deviation(prof, os.path.join(out_dir, "deviation.png"), (grp or {}).get("moe_layers")))
    if any(d is not None and "similarity" in d for d in (prof, grp)):
        written.append(plot_similarity(prof, grp, os.path.join(out_dir, "similarity.png")))
    written.append(plot_curves(run_dir, os.path.join(out_dir, "curves.png")))
    for variant, (rm, lang_to_expert) in (routings or {}).items():
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in variant)
        written.append(plot_routing(rm, os.path.join(out_dir, f"routing_{safe}.png"), lang_to_expert, variant))
    return [w for w in written if w]


# -----------------------------------------------------------------------------
# text tables of analysis/report.py's routing analysis and expert affinity


def routing_report(rm, lang_to_expert=None):
    """Text: per MoE layer, each language's share (%) per expert, its own group's share, the load."""
    langs, E = rm["langs"], rm["matrix"].shape[-1]
    M, own, load, load_cv, label = routing_view(rm)
    lw = max(5, max(len(l) for l in langs) + 1)
    out = [f"% = {label} per expert; g = the language's group expert"]
    for k, layer in enumerate(rm["layers"]):
        head = f"{'layer ' + str(layer):<{lw + 4}}" + "".join(f"{'e' + str(e):>5}" for e in range(E))
        if own is not None:
            head += "   own"
        out += [head, "-" * len(head)]
        for li, lang in enumerate(langs):
            g = (lang_to_expert or {}).get(lang)
            row = f"{lang:<{lw}}{'g' + str(g) if g is not None else '':>4}"
            row += "".join(f"{100 * M[k, li, e]:>5.0f}" for e in range(E))
            if own is not None:
                o = own[k, li]
                row += f"{'-' if np.isnan(o) else f'{100 * o:.0f}%':>6}"
            out.append(row)
        out.append(f"{'load':<{lw + 4}}" + "".join(f"{100 * load[k, e]:>5.0f}" for e in range(E))
                   + f"   cv {load_cv[k]:.2f}")
        out.append("")
    if own is not None and not np.isnan(own).all():
        out.append(f"mean share to the language's own group expert: {np.nanmean(own):.1%} (chance {1 / E:.1%})")
    return "\n".join(out)


def affinity_report(aff, langs, lang_to_expert=None):
    E = aff.shape[1]
    lw = max(5, max(len(l) for l in langs) + 1)
    head = f"{'lang':<{lw}}" + "".join(f"{'e' + str(e) + ' ':>10}" for e in range(E)) + "   best  group"
    out = ["perplexity with every MoE layer forced to one expert (* = lowest)", head, "-" * len(head)]
    for i, l in enumerate(langs):
        best = int(np.argmin(aff[i]))
        row = f"{l:<{lw}}" + "".join(f"{f'{aff[i, e]:.2f}' + ('*' if e == best else ' '):>10}" for e in range(E))
        g = (lang_to_expert or {}).get(l)
        out.append(row + f"{'e' + str(best):>7}{'' if g is None else 'e' + str(g):>7}")
    return "\n".join(out)
