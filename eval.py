"""
Evaluation of nanoDMoE models: per-language held-out loss / perplexity / bits per byte, routing
analysis, expert affinity (PAPER.md step 6) and pictures.

    python eval.py out/cpt.pt out/dmoe.pt                    # compare checkpoints (vs --baseline cpt)
    python eval.py out                                       # every variant of a train.py run directory
    python eval.py out --routing group --split parallel      # forced routing by the language->expert map
    python eval.py out/dmoe.pt --routing_analysis --affinity # where the router sends each language;
                                                             # ppl with every MoE layer forced to expert e
    python eval.py out --pictures out/pics                   # PNGs (or text) from profile/groups/logs too
    python eval.py out/results.json                          # re-print train.py's final table

Metrics, per language (deterministic non-overlapping windows from the start of the split):
- loss = mean nats per target token, ppl = exp(loss) (the paper's number);
- bpb  = summed nats / ln 2 / summed UTF-8 bytes of the target tokens (nanochat's bits per byte).
  Per-token perplexity is not comparable across languages that share one tokenizer (a language the
  vocabulary covers badly has more, easier tokens); bits per byte is.
Averages are plain means over languages (the paper averages per-language perplexities).

matplotlib is optional: it is imported inside the picture functions only, and without it every
picture prints the same information as text (shaded unicode heatmaps, bars, sparklines).
"""

import argparse
import glob
import json
import math
import os
import re
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)
SHADES = " ░▒▓█"            # text heatmap cells, low -> high
SPARKS = "▁▂▃▄▅▆▇█"         # sparklines
EIGHTHS = " ▏▎▍▌▋▊▉█"       # horizontal bars with 1/8 resolution
VARIANT_ORDER = ["base", "cpt", "dmoe", "random", "all_layers"]  # train.py's variants, in table order


def _variant_rank(name):
    """Sort key: train.py's variants first, in pipeline order, a stage-1 checkpoint before its variant."""
    base = name[:-len("_stage1")] if name.endswith("_stage1") else name
    known = VARIANT_ORDER.index(base) if base in VARIANT_ORDER else len(VARIANT_ORDER)
    return known, base, 0 if name != base else 1

# -----------------------------------------------------------------------------
# small helpers


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _autocast(device):
    # bf16 autocast only on CUDA; CPU evaluation stays in fp32 (exact, comparable across machines)
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def moe_modules(model):
    """The MoE layers of a model, in block order (found by class name, so dense models give [])."""
    return [m for m in model.modules() if type(m).__name__ == "MoE"]


def n_experts(model):
    """Current number of experts (read from the router, so upcycle.add_expert is taken into account)."""
    mods = moe_modules(model)
    if mods:
        router = getattr(mods[0], "router", None)
        if router is not None and hasattr(router, "weight"):
            return int(router.weight.shape[0])
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "n_experts", 0) or 0)


def is_moe(model):
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "moe_layers", None) and getattr(cfg, "n_experts", 0):
        return True
    return len(moe_modules(model)) > 0


def moe_layer_ids(model):
    cfg = getattr(model, "config", None)
    layers = list(getattr(cfg, "moe_layers", []) or [])
    return layers if layers else list(range(len(moe_modules(model))))


def token_bytes_tensor(data, device):
    """UTF-8 byte length of every token id (EOT has 0 bytes) as an int64 tensor on device."""
    return torch.tensor(list(data.tokenizer.token_bytes()), dtype=torch.long, device=device)


def _windows(data, lang, split, block_size, max_windows):
    x, y = data.eval_windows(lang, split, block_size, max_windows)
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).long()
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).long()
    return x, y  # (N, T) each


def _routing_args(model, lang, routing, lang_to_expert, force_expert):
    """-> (routing mode for model.forward, expert id for every sequence of `lang` or None)."""
    if not is_moe(model):
        return "learned", None  # dense models ignore routing
    m = re.fullmatch(r"expert:(\d+)", routing) if isinstance(routing, str) else None
    if force_expert is not None or m:
        e = force_expert if force_expert is not None else int(m.group(1))
        if not 0 <= int(e) < n_experts(model):
            raise ValueError(f"force_expert={e} but the model has {n_experts(model)} experts")
        return "group", int(e)
    if routing == "group":
        if lang_to_expert is None:
            raise ValueError("routing='group' needs lang_to_expert (language -> expert id)")
        e = lang_to_expert.get(lang)
        if e is None:  # a language outside every group: nothing to force, use the router
            return "learned", None
        return "group", int(e)
    if routing != "learned":
        raise ValueError(f"unknown routing {routing!r} (learned | group | expert:E)")
    return "learned", None


# -----------------------------------------------------------------------------
# per-language evaluation


def _sum_nats(model, x_all, y_all, tb, mode, expert, device, batch_size):
    """Summed nats, target tokens and target bytes over windows x_all/y_all (N, T)."""
    nats, n_tok, n_bytes = 0.0, 0, 0
    for i in range(0, x_all.shape[0], batch_size):
        x = x_all[i:i + batch_size].to(device)  # (B, T)
        y = y_all[i:i + batch_size].to(device)  # (B, T)
        groups = None if expert is None else torch.full((x.shape[0],), expert, dtype=torch.long, device=device)
        with _autocast(device):
            # targets are passed so that the model returns logits for every position
            logits, _, _ = model(x, targets=y, groups=groups, routing=mode)  # (B, T, V)
        nats += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        n_tok += y.numel()
        n_bytes += int(tb[y].sum().item())
    return nats, n_tok, n_bytes


@torch.no_grad()
def evaluate(model, data, langs, split="val", block_size=None, max_windows=100, routing="learned",
             lang_to_expert=None, force_expert=None, device=None, batch_size=16):
    """
    Held-out metrics per language: {lang: {"loss", "ppl", "bpb", "tokens", "bytes"}}.
    routing: "learned" (the router) | "group" (every sequence of lang goes to lang_to_expert[lang];
    languages missing from the map fall back to learned) | "expert:E" or force_expert=E (every MoE
    layer forced to expert E). Dense models ignore routing. device defaults to the model's device.
    (data.eval_windows raises ValueError for a split shorter than one window; a dataset returning no
    windows gives nan metrics and 0 tokens, which summarize skips.)
    """
    device = torch.device(device) if device is not None else _model_device(model)
    block_size = block_size or model.config.block_size
    langs = data.langs if langs is None else langs
    if block_size > model.config.block_size:
        raise ValueError(f"block_size {block_size} > the model's block_size {model.config.block_size}")
    tb = token_bytes_tensor(data, device)  # (V,)
    was_training = model.training
    model.eval()
    results = {}
    try:
        for lang in langs:
            mode, expert = _routing_args(model, lang, routing, lang_to_expert, force_expert)
            x, y = _windows(data, lang, split, block_size, max_windows)
            nats, n_tok, n_bytes = _sum_nats(model, x, y, tb, mode, expert, device, batch_size)
            loss = nats / n_tok if n_tok else float("nan")
            results[lang] = {"loss": loss,
                             "ppl": math.exp(loss) if n_tok else float("nan"),
                             "bpb": nats / LN2 / n_bytes if n_bytes else float("nan"),
                             "tokens": n_tok, "bytes": n_bytes}
    finally:
        model.train(was_training)
    return results


def summarize(results, langs=None):
    """Averages over languages: mean loss, mean ppl (the paper's average perplexity), mean bpb;
    total tokens and bytes. Languages with no tokens (nan) are skipped; langs restricts the set."""
    keep = [l for l in (langs if langs is not None else results)
            if l in results and results[l].get("tokens", 1) > 0 and not math.isnan(results[l]["loss"])]
    if not keep:
        return {"loss": float("nan"), "ppl": float("nan"), "bpb": float("nan"), "tokens": 0, "bytes": 0, "n_langs": 0}
    mean = lambda k: float(np.mean([results[l][k] for l in keep]))
    return {
        "loss": mean("loss"), "ppl": mean("ppl"), "bpb": mean("bpb"),
        "tokens": int(sum(results[l].get("tokens", 0) for l in keep)),
        "bytes": int(sum(results[l].get("bytes", 0) for l in keep)),
        "n_langs": len(keep),
    }


def _fmt(metric, v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if metric == "ppl":
        if v >= 1e5:
            return f"{v:.2g}"
        return f"{v:.0f}" if v >= 1000 else f"{v:.1f}" if v >= 100 else f"{v:.2f}"
    return f"{v:.3f}"


def fmt_params(n):
    if n is None:
        return "-"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _pct(v, base):
    if base is None or v is None or not base or math.isnan(base) or math.isnan(v):
        return "-"
    return f"{100.0 * (v - base) / base:+.1f}%"


def _wrap_name(name, w):
    """Split a variant name into header lines of at most w characters, preferably after '_'."""
    lines, cur = [], ""
    for part in re.findall(r"[^_]+_?|_", name):
        while len(part) > w:  # a part longer than a line: hard split
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(part[:w])
            part = part[w:]
        if len(cur) + len(part) > w:
            lines.append(cur)
            cur = ""
        cur += part
    return lines + [cur] if cur else lines


def compare_table(results_by_variant, baseline="cpt", params=None, width=120):
    """
    Text table comparing variants: per-language loss/ppl/bpb per variant (metric blocks side by side
    while they fit in `width` columns, else stacked), then one line per variant with its parameter
    count, averages over the languages every variant has, and % change of average ppl and bpb vs
    the baseline variant. results_by_variant: {variant: evaluate(...) result}; params: {variant: int}.
    """
    variants = list(results_by_variant)
    if not variants:
        return "(no results)"
    params = params or {}
    all_langs = []
    for v in variants:
        all_langs += [l for l in results_by_variant[v] if l not in all_langs]
    common = [l for l in all_langs if all(l in results_by_variant[v] for v in variants)]
    lw = max(4, max(len(l) for l in all_langs)) + 1              # language column width
    cw = min(max(9, max(len(v) for v in variants) + 1), 12)       # cell width
    heads = {v: _wrap_name(v, cw - 1) for v in variants}          # long names over 2-3 header lines
    n_head = max(len(h) for h in heads.values())
    heads = {v: [""] * (n_head - len(h)) + h for v, h in heads.items()}  # bottom-aligned

    def metric_block(metrics):
        rows = [(" " * lw + "".join(f" | {m:<{cw * len(variants) - 1}}" for m in metrics)).rstrip()]
        for k in range(n_head):
            rows.append(f"{'lang' if k == n_head - 1 else '':<{lw}}" + "".join(
                " |" + "".join(f"{heads[v][k]:>{cw}}" for v in variants) for _ in metrics))
        rows.append("-" * len(rows[-1]))
        for l in all_langs:
            row = f"{l:<{lw}}"
            for m in metrics:
                row += " |" + "".join(f"{_fmt(m, results_by_variant[v].get(l, {}).get(m)):>{cw}}" for v in variants)
            rows.append(row)
        rows.append("-" * len(rows[-1]))
        row = f"{'avg':<{lw}}"
        for m in metrics:
            row += " |" + "".join(f"{_fmt(m, summarize(results_by_variant[v], common)[m]):>{cw}}" for v in variants)
        rows.append(row)
        return rows

    # pack the metric blocks into as few tables as the width allows
    block_w = 2 + cw * len(variants)
    per_line = max(1, (width - lw) // block_w)
    metrics = ["ppl", "bpb", "loss"]
    lines = []
    for i in range(0, len(metrics), per_line):
        if lines:
            lines.append("")
        lines += metric_block(metrics[i:i + per_line])

    # summary: one line per variant
    summ = {v: summarize(results_by_variant[v], common) for v in variants}
    base = summ.get(baseline)
    nw = max(8, max(len(v) for v in variants) + 1)
    lines.append("")
    head = (f"{'variant':<{nw}}{'params':>10}{'avg loss':>10}{'avg ppl':>10}{'avg bpb':>9}"
            f"{'Δppl':>9}{'Δbpb':>9}{'langs':>7}{'tokens':>11}")
    lines += [head, "-" * len(head)]
    for v in variants:
        s = summ[v]
        mark = " *" if v == baseline else ""
        tok = f"{s['tokens']:,}" if s["tokens"] else "-"
        lines.append(f"{v:<{nw}}{fmt_params(params.get(v)):>10}{_fmt('loss', s['loss']):>10}{_fmt('ppl', s['ppl']):>10}"
                     f"{_fmt('bpb', s['bpb']):>9}{_pct(s['ppl'], base and base['ppl']):>9}"
                     f"{_pct(s['bpb'], base and base['bpb']):>9}{s['n_langs']:>7}{tok:>11}{mark}")
    notes = []
    if base is not None:
        notes.append(f"Δ = change of the average vs baseline '{baseline}' (*); negative is better")
    elif baseline and len(variants) > 1:
        notes.append(f"no baseline '{baseline}' among the variants (choose one with --baseline)")
    if len(common) < len(all_langs):
        notes.append(f"averages over the {len(common)} languages every variant has")
    notes.append("ppl = exp(mean nats/token); bpb = nats / ln2 / UTF-8 bytes (comparable across languages)")
    lines += ["  " + n for n in notes]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# routing analysis and expert affinity


@torch.no_grad()
def routing_matrix(model, data, langs, split="val", block_size=None, max_windows=32, lang_to_expert=None,
                   device=None, batch_size=16):
    """
    Where the learned router sends each language's tokens. Returns a dict:
      langs, layers      the languages and the MoE block ids
      matrix             (n_moe, n_langs, E) share of each language's token-slots per expert, from
                         aux["expert_counts"] (top_k slots per token; rows sum to 1)
      top1, prob         (n_moe, n_langs, E) share of tokens whose first choice is e / mean router
                         probability of e (informative also when top_k >= E makes `matrix` uniform)
      own_group_share    (n_moe, n_langs) matrix's share to the language's group expert, nan where the
                         language has none; None without lang_to_expert (own_group_top1 likewise, top1)
      load, load_cv      (n_moe, E) share of all slots per expert; (n_moe,) its coefficient of variation
      top_k              the model's top_k
    """
    if not is_moe(model):
        raise ValueError("routing_matrix needs an MoE model (this one is dense)")
    device = torch.device(device) if device is not None else _model_device(model)
    block_size = block_size or model.config.block_size
    E = n_experts(model)
    layers = moe_layer_ids(model)
    mods = moe_modules(model)
    counts = np.zeros((len(layers), len(langs), E))
    top1 = np.zeros_like(counts)
    prob = np.zeros_like(counts)
    cur = {"li": 0}

    def hook_for(k):
        # the router's view of the MoE input x (B, T, C): first choice and probabilities per token
        def hook(mod, args):
            x = args[0]
            logits = F.linear(x.reshape(-1, x.shape[-1]).float(), mod.router.weight.float())  # (N, E)
            p = logits.softmax(-1)
            top1[k, cur["li"]] += torch.bincount(p.argmax(-1), minlength=E).cpu().numpy()
            prob[k, cur["li"]] += p.sum(0).cpu().numpy()
        return hook

    handles = [m.register_forward_pre_hook(hook_for(k)) for k, m in enumerate(mods)]
    was_training = model.training
    model.eval()
    try:
        for li, lang in enumerate(langs):
            cur["li"] = li
            x_all, y_all = _windows(data, lang, split, block_size, max_windows)
            for i in range(0, x_all.shape[0], batch_size):
                x = x_all[i:i + batch_size].to(device)  # (B, T)
                y = y_all[i:i + batch_size].to(device)
                with _autocast(device):
                    _, _, aux = model(x, targets=y, groups=None, routing="learned")
                counts[:, li, :] += aux["expert_counts"].detach().float().cpu().numpy()  # (n_moe, E)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def rownorm(c):
        tot = c.sum(-1, keepdims=True)
        return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)

    cv = lambda load: load.std(-1) / np.maximum(load.mean(-1), 1e-12)
    load, load_top1 = rownorm(counts.sum(1)), rownorm(top1.sum(1))  # (n_moe, E) over all languages' tokens
    matrix, top1, prob = rownorm(counts), rownorm(top1), rownorm(prob)

    def own_share(M):
        if not lang_to_expert:
            return None
        own = np.full((len(layers), len(langs)), np.nan)
        for li, lang in enumerate(langs):
            e = lang_to_expert.get(lang)
            if e is not None and 0 <= e < E:
                own[:, li] = M[:, li, e]
        return own

    return {"langs": list(langs), "layers": layers, "matrix": matrix, "top1": top1, "prob": prob,
            "own_group_share": own_share(matrix), "own_group_top1": own_share(top1),
            "load": load, "load_cv": cv(load), "load_top1": load_top1, "load_top1_cv": cv(load_top1),
            "top_k": int(getattr(model.config, "top_k", 1))}


def _routing_view(rm):
    """(matrix, own share, load, load cv, label) to show: the slot shares, or the first choices when
    top_k >= E (then every token uses every expert and the slot shares are uniform by construction)."""
    E = rm["matrix"].shape[-1]
    if rm.get("top1") is not None and rm.get("top_k", 1) >= E:
        return (rm["top1"], rm.get("own_group_top1"), rm["load_top1"], rm["load_top1_cv"],
                f"first-choice share (top_k={rm['top_k']} >= E={E})")
    return rm["matrix"], rm.get("own_group_share"), rm["load"], rm["load_cv"], "share of token-slots"


def routing_report(rm, lang_to_expert=None):
    """Text: per MoE layer, each language's share (%) per expert, its own group's share, the load."""
    langs, E = rm["langs"], rm["matrix"].shape[-1]
    M, own, load, load_cv, label = _routing_view(rm)
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


def expert_affinity(model, data, langs, split="val", block_size=None, max_windows=16, device=None, batch_size=16):
    """(n_langs, E) perplexity of each language with every MoE layer forced to expert e (PAPER.md
    step 6: the argmin is the most similar expert, the one a new language's expert is copied from)."""
    if not is_moe(model):
        raise ValueError("expert_affinity needs an MoE model (this one is dense)")
    E = n_experts(model)
    aff = np.zeros((len(langs), E))
    for e in range(E):
        res = evaluate(model, data, langs, split=split, block_size=block_size, max_windows=max_windows,
                       force_expert=e, device=device, batch_size=batch_size)
        aff[:, e] = [res[l]["ppl"] for l in langs]
    return aff


def most_similar_expert(model=None, data=None, langs=None, affinity=None, **kwargs):
    """{lang: expert id with the lowest forced-routing perplexity}; pass a precomputed affinity
    (with langs) to skip the evaluation."""
    if affinity is None:
        affinity = expert_affinity(model, data, langs, **kwargs)
    return {l: int(np.argmin(affinity[i])) for i, l in enumerate(langs)}


def affinity_report(aff, langs, lang_to_expert=None):
    E = aff.shape[1]
    lw = max(5, max(len(l) for l in langs) + 1)
    head = f"{'lang':<{lw}}" + "".join(f"{'e' + str(e) + ' ':>10}" for e in range(E)) + "   best  group"
    out = ["perplexity with every MoE layer forced to one expert (* = lowest)", head, "-" * len(head)]
    for i, l in enumerate(langs):
        best = int(np.argmin(aff[i]))
        row = f"{l:<{lw}}" + "".join(f"{_fmt('ppl', aff[i, e]) + ('*' if e == best else ' '):>10}" for e in range(E))
        g = (lang_to_expert or {}).get(l)
        out.append(row + f"{'e' + str(best):>7}{'' if g is None else 'e' + str(g):>7}")
    return "\n".join(out)


# -----------------------------------------------------------------------------
# text renderings (used as the fallback of every picture)


def _norm(M, vmin=None, vmax=None):
    M = np.asarray(M, dtype=float)
    vmin = np.nanmin(M) if vmin is None else vmin
    vmax = np.nanmax(M) if vmax is None else vmax
    return np.clip((M - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0, 1), vmin, vmax


def text_heatmap(M, rows, cols, title="", vmin=None, vmax=None, cell=None, bounds=()):
    """Shaded unicode heatmap (rows x cols). Column labels longer than a cell are written vertically;
    bounds = indices where a new block (group) starts, drawn as lines (square matrices)."""
    N, vmin, vmax = _norm(M, vmin, vmax)
    cell = cell or (2 if len(cols) <= 60 else 1)
    lw = max(len(str(r)) for r in rows) + 1
    sep = lambda j: "│" if j in bounds else ""
    out = [title] if title else []
    labels = [str(c) for c in cols]
    if all(len(c) < cell for c in labels):
        out.append(" " * lw + "".join(f"{sep(j)}{c:<{cell}}" for j, c in enumerate(labels)))
    else:  # vertical labels, one character per line
        for k in range(max(len(c) for c in labels)):
            out.append(" " * lw + "".join(f"{sep(j)}{c[k] if k < len(c) else ' ':<{cell}}" for j, c in enumerate(labels)))
    for i, r in enumerate(rows):
        if i in bounds:
            out.append(" " * lw + "".join(("┼" if j in bounds else "") + "─" * cell for j in range(N.shape[1])))
        cells = ""
        for j in range(N.shape[1]):
            v = N[i, j]
            cells += sep(j) + (" " if np.isnan(v) else SHADES[min(len(SHADES) - 1, int(v * len(SHADES)))]) * cell
        out.append(f"{str(r):<{lw}}{cells}")
    out.append(f"{'':<{lw}}scale: '{SHADES[1]}' low .. '{SHADES[-1]}' high, {vmin:.3g} .. {vmax:.3g}")
    return "\n".join(out)


def sparkline(values, vmin=None, vmax=None):
    N, _, _ = _norm(values, vmin, vmax)
    return "".join(" " if np.isnan(v) else SPARKS[min(len(SPARKS) - 1, int(v * len(SPARKS)))] for v in N)


def text_bar(v, vmax, width=24):
    n = 0 if not vmax or np.isnan(v) else max(0.0, v / vmax) * width
    full = int(n)
    return "█" * full + (EIGHTHS[int((n - full) * 8)] if full < width else "")


# -----------------------------------------------------------------------------
# pictures (PNG via matplotlib's Agg backend; each prints its text fallback without matplotlib)


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
    langs = profile["langs"]
    ffn = np.array([profile["ffn_dev"][l] for l in langs], dtype=float)   # (n_langs, L)
    attn = np.array([profile["attn_dev"][l] for l in langs], dtype=float)
    lw = max(5, max(len(l) for l in langs) + 1)
    L = ffn.shape[1]
    cw = max(L, 4) + 2
    out = [f"per-layer parameter deviation, layers 0..{L - 1} left to right (one min..max scale per kind)",
           f"{'lang':<{lw}}{'ffn':<{cw}}{'attn':<{cw}}ffn/attn (mean)"]
    for i, l in enumerate(langs):
        ratio = np.nanmean(ffn[i]) / max(np.nanmean(attn[i]), 1e-12)
        out.append(f"{l:<{lw}}{sparkline(ffn[i], np.nanmin(ffn), np.nanmax(ffn)):<{cw}}"
                   f"{sparkline(attn[i], np.nanmin(attn), np.nanmax(attn)):<{cw}}{ratio:.2f}")
    D = ffn.mean(0)
    Dn = (D - D.min()) / (D.max() - D.min() if D.max() > D.min() else 1.0)
    out += ["", "mean over languages (the normalised FFN deviation D̂ is what layer selection thresholds):",
            f"{'layer':>5} {'ffn':>10} {'attn':>10} {'D^':>5}"]
    for j in range(L):
        moe = "  MoE" if moe_layers and j in moe_layers else ""
        out.append(f"{j:>5} {D[j]:>10.4g} {attn.mean(0)[j]:>10.4g} {Dn[j]:>5.2f} {text_bar(Dn[j], 1.0, 20):<20}{moe}")
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


def _similarity_inputs(profile, groups=None):
    """(S, langs ordered by group, group boundaries) from profile.json / groups.json dicts."""
    src = profile if profile is not None and "similarity" in profile else groups
    S = np.asarray(src["similarity"], dtype=float)
    langs = list(src["langs"])
    glist = None
    if groups is not None:
        glist = groups.get("groups") if isinstance(groups, dict) else groups
    if not glist:
        return S, langs, langs, []
    order, bounds = [], []
    for g in glist:
        order += [l for l in g if l in langs and l not in order]
        bounds.append(len(order))
    order += [l for l in langs if l not in order]
    idx = [langs.index(l) for l in order]
    return S[np.ix_(idx, idx)], langs, order, bounds[:-1]


def plot_similarity(profile, groups=None, out_path="similarity.png"):
    """Heatmap of the language similarity (cosine of deviation vectors), languages ordered by group."""
    S, _, order, bounds = _similarity_inputs(profile, groups)
    off = S[~np.eye(len(S), dtype=bool)] if len(S) > 1 else S.ravel()
    vmin, vmax = float(np.min(off)), float(np.max(off))  # scale on off-diagonal values (diag = 1)
    plt = _pyplot()
    if plt is None:
        M = S.copy()
        np.fill_diagonal(M, np.nan)
        print(text_heatmap(M, order, order, title="language similarity (ordered by group; diagonal blank)",
                           vmin=vmin, vmax=vmax, bounds=set(bounds)))
        return None
    n = len(order)
    fig, ax = plt.subplots(figsize=(max(4, 0.32 * n + 2), max(3.5, 0.32 * n + 1.5)))
    M = S.copy()
    np.fill_diagonal(M, np.nan)
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


_KEYS = {"step": ("step", "iter", "it", "iter_num"), "tokens": ("tokens", "tokens_seen", "tok"),
         "loss": ("loss", "train_loss"), "val_loss": ("val_loss", "val")}


def _parse_log_line(line):
    """A dict with any of step/tokens/loss/val_loss from a JSON line or a 'step 42 | loss 3.2' line."""
    line = line.strip()
    if not line:
        return None
    rec = None
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
    out = {}
    if isinstance(rec, dict):
        for k, names in _KEYS.items():
            for n in names:
                if isinstance(rec.get(n), (int, float)) and not isinstance(rec.get(n), bool):
                    out[k] = float(rec[n])
                    break
    else:
        for k, pat in (("step", r"\b(?:step|iter)\s*[:=]?\s*(\d+)"),
                       ("val_loss", r"\bval(?:[_ ]loss)?\s*[:=]?\s*(\d[\d.]*)"),
                       ("loss", r"(?<![\w])(?<!val )(?:train[_ ])?loss\s*[:=]?\s*(\d[\d.]*)"),
                       ("tokens", r"\btokens\s*[:=]?\s*(\d[\d,]*)")):
            m = re.search(pat, line)
            if m:
                try:
                    out[k] = float(m.group(1).replace(",", ""))
                except ValueError:
                    pass
    return out if ("loss" in out or "val_loss" in out) else None


GENERIC_LOGS = {"log", "logs", "train", "metrics", "progress"}


def read_logs(run_dir):
    """{variant: [records]} from every *.jsonl / log*.txt under run_dir. Variant = the file stem
    (train.py writes OUT/logs/<stage>.jsonl), or the directory for generic names (OUT/<variant>/log.jsonl).
    Lines that are neither JSON records nor 'step 42 | loss 3.2' text are skipped."""
    files = sorted(set(glob.glob(os.path.join(run_dir, "**", "*.jsonl"), recursive=True)
                       + glob.glob(os.path.join(run_dir, "**", "log*.txt"), recursive=True)))
    logs = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        rel = os.path.relpath(os.path.dirname(f), run_dir).replace(os.sep, "/")
        if stem.lower() in GENERIC_LOGS:
            variant = os.path.basename(os.path.abspath(run_dir)) if rel == "." else rel
        else:
            variant = stem
        recs = []
        with open(f, errors="replace") as fh:
            for line in fh:
                r = _parse_log_line(line)
                if r is not None:
                    recs.append(r)
        if recs:
            logs.setdefault(variant, []).extend(recs)
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
            shift = {k: max((r[k] for r in s1 if k in r), default=0.0) for k in ("step", "tokens")}
            recs = list(s1) + [{k: (x + shift[k] if k in shift else x) for k, x in r.items()} for r in recs]
        out[v] = recs
    return {v: out[v] for v in sorted(out, key=_variant_rank)}


def _curve_x(recs):
    key = "tokens" if sum("tokens" in r for r in recs) >= 0.8 * len(recs) else "step"
    return key


def _resample(v, n=40):
    """At most n points: the mean of n equal bins (a sparkline of any log length has the same width)."""
    v = np.asarray(v, dtype=float)
    if len(v) <= n:
        return v
    return np.array([b.mean() for b in np.array_split(v, n)])


def text_curves(logs):
    """Sparklines of the binned train loss; the variants after base share one scale, base has its own."""
    nw = max(8, max(len(v) for v in logs) + 1)
    binned = {v: _resample([r["loss"] for r in recs if "loss" in r]) for v, recs in logs.items()}
    shared = [b for v, b in binned.items() if v != "base" and len(b)]
    lo = min((b.min() for b in shared), default=None)
    hi = max((b.max() for b in shared), default=None)
    out = ["training curves: train loss (binned means; variants after base on one scale), "
           "mean of the last 10% of train steps, best val loss"]
    for v, recs in logs.items():
        tr = [r["loss"] for r in recs if "loss" in r]
        va = [r["val_loss"] for r in recs if "val_loss" in r]
        xk = _curve_x(recs)
        last_x = max((r.get(xk, 0) for r in recs), default=0)
        spark = (sparkline(binned[v]) if v == "base" else sparkline(binned[v], lo, hi)) if tr else ""
        tail = float(np.mean(tr[-max(1, len(tr) // 10):])) if tr else None
        out.append(f"{v:<{nw}}{spark:<41} train {_fmt('loss', tail):>6}  "
                   f"val {_fmt('loss', min(va) if va else None):>6}  ({xk} {last_x:,.0f})")
    return "\n".join(out)


def _smooth(v, n):
    """Trailing moving average over n points (the per-step train loss is noisy)."""
    if n <= 1 or len(v) < 2:
        return list(v)
    c = np.cumsum(np.insert(np.asarray(v, dtype=float), 0, 0.0))
    return [(c[i + 1] - c[max(0, i + 1 - n)]) / (i + 1 - max(0, i + 1 - n)) for i in range(len(v))]


def plot_curves(run_dir, out_path="curves.png", logs=None):
    """Train loss (smoothed line) and val loss (markers) of every variant of a run directory vs tokens
    (or steps). The dense base run gets its own panel: the variants start from it with matched tokens."""
    logs = merge_stages(logs if logs is not None else read_logs(run_dir))
    if not logs:
        print(f"no training logs under {run_dir}")
        return None
    plt = _pyplot()
    if plt is None:
        print(text_curves(logs))
        return None
    panels = [{"base": logs["base"]}, {v: r for v, r in logs.items() if v != "base"}] if "base" in logs and len(logs) > 1 else [logs]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 4 * len(panels), 4.5), squeeze=False)
    colors = {v: f"C{i % 10}" for i, v in enumerate(logs)}
    for ax, panel in zip(axes[0], panels):
        for v, recs in panel.items():
            xk = _curve_x(recs)
            tr = [(r[xk], r["loss"]) for r in recs if "loss" in r and xk in r]
            va = [(r[xk], r["val_loss"]) for r in recs if "val_loss" in r and xk in r]
            if tr:
                x, y = zip(*tr)
                ax.plot(x, _smooth(y, max(1, len(y) // 25)), color=colors[v], lw=1.2, label=f"{v} train")
            if va:
                ax.plot(*zip(*va), "o--", color=colors[v], ms=3, lw=0.8, label=f"{v} val")
        xks = {_curve_x(r) for r in panel.values()}
        ax.set_xlabel("tokens" if xks == {"tokens"} else "steps" if xks == {"step"} else "tokens / steps")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("dense base" if list(panel) == ["base"] else "after base (matched tokens)" if "base" in logs
                     else "training", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_routing(rm, out_path="routing.png", lang_to_expert=None, name=""):
    """Heatmap per MoE layer: share of each language's tokens per expert (learned routing)."""
    langs = rm["langs"]
    M, _, _, load_cv, label = _routing_view(rm)
    E = M.shape[-1]
    plt = _pyplot()
    if plt is None:
        for k, layer in enumerate(rm["layers"]):
            rows = [f"{l} g{lang_to_expert[l]}" if lang_to_expert and lang_to_expert.get(l) is not None else l for l in langs]
            print(text_heatmap(M[k], rows, [str(e) for e in range(E)], vmin=0, vmax=float(M[k].max()), cell=3,
                               title=f"routing{' of ' + name if name else ''}, layer {layer}: {label} "
                                     f"(rows: languages, columns: experts)"))
        return None
    n = len(rm["layers"])
    fig, axes = plt.subplots(1, n, figsize=(max(5.5, 1.5 + 0.45 * E * n + 1.0 * n), 1.8 + 0.28 * len(langs)),
                             squeeze=False,
                             layout="constrained")
    for k, layer in enumerate(rm["layers"]):
        ax = axes[0][k]
        im = ax.imshow(M[k], cmap="magma", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(E), [str(e) for e in range(E)], fontsize=7)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        if lang_to_expert:
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
# command line

GENERIC_STEMS = {"ckpt", "model", "final", "last", "best", "checkpoint"}


def _variant_name(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent if stem in GENERIC_STEMS and parent else stem


def find_checkpoints(paths, stages=False):
    """[(variant, path)] from checkpoint files and/or directories: a directory's own *.pt and its
    subdirectories' generically named ones (<variant>/ckpt.pt, ...), not other files below it (so a run
    dir's adapt-*/ experiments are not mixed into its table; name that directory to read those).
    Variant = the parent directory for generic names (ckpt.pt, final.pt, ...), else the file stem.
    In a directory, a stage-1 checkpoint <v>_stage1.pt is left out when <v> is there too (stages=True
    keeps it) and the variants come in train.py's order (base, cpt, dmoe, random, all_layers, others)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            files = glob.glob(os.path.join(p, "*.pt")) + [
                f for f in glob.glob(os.path.join(p, "*", "*.pt"))
                if os.path.splitext(os.path.basename(f))[0] in GENERIC_STEMS]
            if not files:
                raise SystemExit(f"no *.pt checkpoints under {p}")
            names = {_variant_name(f) for f in files}
            if not stages:
                files = [f for f in files if not (_variant_name(f).endswith("_stage1")
                                                  and _variant_name(f)[:-len("_stage1")] in names)]
            out += sorted(files, key=lambda f: (_variant_rank(_variant_name(f)), f))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise SystemExit(f"no such checkpoint or directory: {p}")
    named, seen = [], set()
    for f in out:
        name = base = _variant_name(f)
        i = 2
        while name in seen:
            name = f"{base}#{i}"
            i += 1
        seen.add(name)
        named.append((name, f))
    return named


def load_dataset(path):
    import data as datamod
    return datamod.Dataset.load(path)


def _resolve_cache(ckpt, ckpt_path, override):
    if override:
        return override
    cfg = ckpt.get("config") or {}
    dc = cfg.get("data_cache")
    if not dc:
        raise SystemExit(f"{ckpt_path}: no config['data_cache'] in the checkpoint; pass --data_cache DIR")
    if os.path.isabs(dc) or os.path.exists(dc):
        return dc
    # relative to where training ran; try next to the checkpoint and its parents too
    d = os.path.dirname(os.path.abspath(ckpt_path))
    for _ in range(3):
        if os.path.exists(os.path.join(d, dc)):
            return os.path.join(d, dc)
        d = os.path.dirname(d)
    return dc


def seed_summary(runs, baseline="cpt"):
    """Mean ± sample std over runs (e.g. seeds) of each variant's average perplexity and bits per byte,
    and of its % change against the baseline within each run. MoE variants evaluated with every language
    forced to its group's expert (train.py's "forced_group") get a second row, "<variant> forced"."""
    tables = {v: [r["variants"][v] for r in runs] for v in runs[0]["variants"] if all(v in r["variants"] for r in runs)}
    for v in runs[0].get("forced_group", {}):
        if all(v in r.get("forced_group", {}) for r in runs):
            tables[v + " forced"] = [r["forced_group"][v] for r in runs]
    avg = {v: [summarize(t) for t in ts] for v, ts in tables.items()}   # per variant, per run
    lines = [f"{len(runs)} runs; mean ± std over runs of the per-run average over languages",
             f"{'variant':<17} {'avg ppl':>16} {'avg bpb':>18} {'Δppl vs ' + baseline:>18}"]
    for v in avg:
        ppl = np.array([a["ppl"] for a in avg[v]])
        bpb = np.array([a["bpb"] for a in avg[v]])
        row = f"{v:<17} {ppl.mean():9.2f} ± {ppl.std(ddof=1):5.2f} {bpb.mean():10.4f} ± {bpb.std(ddof=1):.4f}"
        if baseline in avg:
            d = 100 * (ppl / np.array([a["ppl"] for a in avg[baseline]]) - 1)
            row += f" {d.mean():+9.2f}% ± {d.std(ddof=1):.2f}"
        lines.append(row)
    return "\n".join(lines)


def sample(args):
    """python eval.py out/dmoe.pt --sample "Все люди рождаются" [--sample_lang ru]: generate a continuation."""
    import data as datamod
    import model as modelmod
    torch.manual_seed(0)
    for variant, path in find_checkpoints(args.paths):
        ckpt = modelmod.load_checkpoint(path)
        model = modelmod.model_from_checkpoint(ckpt, args.device).eval()
        tok = datamod.Tokenizer.from_state_dict(ckpt["vocab"])
        idx = torch.tensor([tok.encode(args.sample)], dtype=torch.long, device=args.device)
        kw = {}
        l2e = ckpt.get("lang_to_expert") or {}
        if args.sample_lang and is_moe(model):
            if args.sample_lang not in l2e:
                raise SystemExit(f"error: --sample_lang {args.sample_lang} not among {','.join(l2e)}")
            kw = dict(groups=torch.tensor([l2e[args.sample_lang]], device=args.device), routing="group")
        out = model.generate(idx, args.sample_tokens, temperature=0.8, top_k=50, **kw)
        print(f"--- {variant} ({path})\n{tok.decode(out[0].tolist())}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Per-language loss/ppl/bits-per-byte of nanoDMoE checkpoints.")
    p.add_argument("paths", nargs="+", help="checkpoint files and/or run directories (searched for *.pt)")
    p.add_argument("--routing", default="learned", help="learned | group | expert:E")
    p.add_argument("--split", default="val", choices=["val", "parallel"],
                   help="val: held-out documents; parallel: held-out UDHR articles, the same text in every language")
    p.add_argument("--data_cache", default=None, help="dataset dir (default: the checkpoint's config['data_cache'])")
    p.add_argument("--langs", default=None, help="comma list (default: the checkpoint's languages)")
    p.add_argument("--baseline", default="cpt", help="variant the %% changes are relative to")
    p.add_argument("--stages", action="store_true", help="also evaluate <variant>_stage1.pt found in a run dir")
    p.add_argument("--max_windows", type=int, default=100)
    p.add_argument("--block_size", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--routing_analysis", action="store_true", help="where the learned router sends each language")
    p.add_argument("--affinity", action="store_true", help="ppl with every MoE layer forced to each expert")
    p.add_argument("--pictures", default=None, metavar="OUTDIR", help="write PNGs (text without matplotlib)")
    p.add_argument("--profile", default=None, help="profile.json for pictures (default: RUN_DIR/profile.json)")
    p.add_argument("--groups", default=None, help="groups.json for pictures (default: RUN_DIR/groups.json)")
    p.add_argument("--sample", default=None, metavar="PROMPT", help="print a continuation of PROMPT instead")
    p.add_argument("--sample_tokens", type=int, default=60)
    p.add_argument("--sample_lang", default=None, help="route the sample to this language's expert (group routing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.sample is not None:
        return sample(args)
    if not (args.routing in ("learned", "group") or re.fullmatch(r"expert:\d+", args.routing)):
        p.error("--routing must be learned, group or expert:E")

    datasets, results, params, analyses = {}, {}, {}, {}
    # a pipeline's results.json (train.py) is printed as it is, without evaluating anything
    jsons = [q for q in args.paths if q.endswith(".json") and os.path.isfile(q)]
    if len(jsons) > 1 and len(jsons) == len(args.paths):   # several runs (seeds): mean ± std per variant
        runs = []
        for q in jsons:
            with open(q) as f:
                runs.append(json.load(f))
        print(seed_summary(runs, baseline=args.baseline))
        return runs
    for q in jsons:
        with open(q) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or "variants" not in saved:
            raise SystemExit(f"{q}: not a results.json (no 'variants' key)")
        for v, res in saved["variants"].items():
            results[v] = res
            if (saved.get("params") or {}).get(v) is not None:
                params[v] = saved["params"][v]
    paths = [q for q in args.paths if q not in jsons]
    ckpts = find_checkpoints(paths, stages=args.stages) if paths else []
    if ckpts:
        import model as modelmod
    for variant, path in ckpts:
        try:
            ckpt = modelmod.load_checkpoint(path, device="cpu")
        except (RuntimeError, ValueError, OSError) as e:
            print(f"skipping {path}: {e}")
            continue
        model = modelmod.model_from_checkpoint(ckpt, args.device)
        cache = _resolve_cache(ckpt, path, args.data_cache)
        if cache not in datasets:
            try:
                datasets[cache] = load_dataset(cache)
            except FileNotFoundError as e:
                raise SystemExit(f"error: {e} (or pass --data_cache DIR)")
        data = datasets[cache]
        if ckpt.get("vocab") and hasattr(data.tokenizer, "state_dict") and ckpt["vocab"] != data.tokenizer.state_dict():
            print(f"warning: {path} was trained with another vocabulary than {cache}'s tokenizer")
        if args.langs:
            langs = [l for l in args.langs.split(",") if l]
            missing = [l for l in langs if l not in data.langs]
            if missing:
                raise SystemExit(f"error: {missing} not in {cache} (it has {','.join(data.langs)})")
        else:
            langs = [l for l in (ckpt.get("langs") or data.langs) if l in data.langs]
        l2e = ckpt.get("lang_to_expert")
        routing = args.routing
        if routing == "group" and not l2e:
            routing = "learned"  # dense or never grouped: nothing to force
        t0 = time.time()
        try:
            res = evaluate(model, data, langs, split=args.split, block_size=args.block_size,
                           max_windows=args.max_windows, routing=routing, lang_to_expert=l2e,
                           device=args.device, batch_size=args.batch_size)
        except ValueError as e:  # expert id out of range, a split shorter than one window, ...
            raise SystemExit(f"error: {path}: {e}")
        results[variant] = res
        params[variant] = model.num_params() if hasattr(model, "num_params") else sum(q.numel() for q in model.parameters())
        s = summarize(res)
        kind = f"MoE {n_experts(model)} experts in layers {moe_layer_ids(model)}" if is_moe(model) else "dense"
        done = "" if ckpt.get("done", True) else ", unfinished"
        print(f"{variant:<12} {path}  [{ckpt.get('stage', '?')}{done}, {kind}, routing {routing if is_moe(model) else '-'}] "
              f"avg ppl {_fmt('ppl', s['ppl'])} bpb {_fmt('bpb', s['bpb'])} ({s['tokens']:,} tokens, {time.time() - t0:.1f}s)")
        if is_moe(model) and (args.routing_analysis or args.pictures):
            rm = routing_matrix(model, data, langs, split=args.split, block_size=args.block_size,
                                max_windows=min(args.max_windows, 32), lang_to_expert=l2e,
                                device=args.device, batch_size=args.batch_size)
            analyses[variant] = (rm, l2e)
            if args.routing_analysis:
                print(f"\nrouting of {variant} (learned router, {args.split} split)")
                print(routing_report(rm, l2e))
        if is_moe(model) and args.affinity:
            aff = expert_affinity(model, data, langs, split=args.split, block_size=args.block_size,
                                  max_windows=min(args.max_windows, 16), device=args.device, batch_size=args.batch_size)
            print(f"\nexpert affinity of {variant}")
            print(affinity_report(aff, langs, l2e))
        del model

    print()
    if ckpts:
        print(f"split {args.split} | routing {args.routing} (MoE checkpoints) | up to {args.max_windows} windows "
              f"per language | {args.device}")
    print(compare_table(results, baseline=args.baseline, params=params))

    if args.pictures:
        os.makedirs(args.pictures, exist_ok=True)
        first = ckpts[0][1] if ckpts else args.paths[0]
        run_dir = next((q for q in args.paths if os.path.isdir(q)), os.path.dirname(first) or ".")
        prof_path = args.profile or os.path.join(run_dir, "profile.json")
        grp_path = args.groups or os.path.join(run_dir, "groups.json")
        prof = json.load(open(prof_path)) if os.path.exists(prof_path) else None
        grp = json.load(open(grp_path)) if os.path.exists(grp_path) else None
        written = []
        if prof is not None and "ffn_dev" in prof:
            written.append(plot_deviation(prof, os.path.join(args.pictures, "deviation.png"),
                                          (grp or {}).get("moe_layers")))
        if (prof is not None and "similarity" in prof) or (grp is not None and "similarity" in grp):
            written.append(plot_similarity(prof, grp, os.path.join(args.pictures, "similarity.png")))
        written.append(plot_curves(run_dir, os.path.join(args.pictures, "curves.png")))
        for variant, (rm, l2e) in analyses.items():
            safe = re.sub(r"[^\w.-]+", "_", variant)
            written.append(plot_routing(rm, os.path.join(args.pictures, f"routing_{safe}.png"), l2e, variant))
        written = [w for w in written if w]
        if written:
            print("\nwrote " + ", ".join(written))
    return results


if __name__ == "__main__":
    main()
