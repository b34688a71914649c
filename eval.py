"""
Evaluation of nanoDMoE models (docs/METHOD.md §8): per-language held-out loss / perplexity / bits per
byte, the table, and train.py's final report (results.json).

    python eval.py out/cpt.pt out/dmoe.pt                    # compare checkpoints (vs --baseline cpt)
    python eval.py out                                       # every variant of a train.py run directory
    python eval.py out --routing group --split parallel      # every language forced to its group's expert
    python eval.py out/dmoe.pt --routing expert:2            # every language forced to expert 2
    python eval.py out/results.json                          # re-print train.py's final table
    python eval.py out/dmoe.pt --sample "Все люди" --sample_lang ru   # a continuation of a prompt

Where the router sends each language, pictures, and several seeds' runs: analysis/report.py.

Metrics, per language (deterministic non-overlapping windows from the start of the split):
- loss = mean nats per target token, ppl = exp(loss) (the paper's number);
- bpb  = summed nats / ln 2 / summed UTF-8 bytes of the target tokens (nanochat's bits per byte).
  Per-token perplexity is not comparable across languages that share one tokenizer (a language the
  vocabulary covers badly has more, easier tokens); bits per byte is.
Averages are plain means over languages (the paper averages per-language perplexities).
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

import group
from common import check_device, data_fingerprint, default_device, find_data_cache, save_json, stale_data
from model import load_checkpoint, model_from_checkpoint

LN2 = math.log(2.0)

# -----------------------------------------------------------------------------
# per-language evaluation


def _autocast(device):
    # bf16 autocast only on CUDA; CPU evaluation stays in fp32 (exact, comparable across machines)
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _sum_nats(model, x_all, y_all, tb, expert, device, batch_size):
    """Summed nats, target tokens and target bytes over windows x_all, y_all (N, T); expert: the expert
    every sequence is forced to (group routing), or None for the learned router."""
    nats, n_tok, n_bytes = 0.0, 0, 0
    for i in range(0, x_all.shape[0], batch_size):
        x = x_all[i:i + batch_size].to(device)  # (B, T)
        y = y_all[i:i + batch_size].to(device)  # (B, T)
        ids = None if expert is None else torch.full((x.shape[0],), expert, dtype=torch.long, device=device)
        with _autocast(device):
            # targets are passed so that the model returns logits for every position
            logits, _, _ = model(x, targets=y, expert_ids=ids, routing="learned" if ids is None else "group")
        nats += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        n_tok += y.numel()
        n_bytes += int(tb[y].sum().item())
    return nats, n_tok, n_bytes


@torch.no_grad()
def evaluate(model, data, langs, split="val", block_size=None, max_windows=100, routing="learned",
             lang_to_expert=None, force_expert=None, device=None, batch_size=16):
    """
    Held-out metrics per language: {lang: {"loss", "ppl", "bpb", "tokens", "bytes"}}.
    routing "learned": the router; "group": every sequence of lang goes to expert lang_to_expert[lang]
    (a language missing from the map falls back to the router). force_expert=E sends every language
    to expert E (group routing with every language mapped to E). Dense models ignore routing.
    device defaults to the model's device. (data.eval_windows raises ValueError for a split shorter
    than one window; a dataset returning no windows gives nan metrics and 0 tokens, which summarize skips.)
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    block_size = block_size or model.config.block_size
    langs = data.langs if langs is None else langs
    if block_size > model.config.block_size:
        raise ValueError(f"block_size {block_size} > the model's block_size {model.config.block_size}")
    if force_expert is not None:
        routing, lang_to_expert = "group", dict.fromkeys(langs, int(force_expert))
    if routing not in ("learned", "group"):
        raise ValueError(f"unknown routing {routing!r} (learned | group)")
    experts = {}  # {lang: the expert its sequences are forced to}; none for a dense model
    if routing == "group" and model.config.moe_layers:
        if lang_to_expert is None:
            raise ValueError("routing='group' needs lang_to_expert (language -> expert id)")
        experts = {l: lang_to_expert[l] for l in langs if lang_to_expert.get(l) is not None}
        bad = {l: e for l, e in experts.items() if not 0 <= e < model.config.n_experts}
        if bad:
            raise ValueError(f"expert ids {bad} out of range: the model has {model.config.n_experts} experts")
    tb = torch.tensor(list(data.tokenizer.token_bytes()), dtype=torch.long, device=device)  # (V,) EOT: 0
    was_training = model.training
    model.eval()
    results = {}
    try:
        for lang in langs:
            x, y = data.eval_windows(lang, split, block_size, max_windows)  # (N, T) int64 each
            nats, n_tok, n_bytes = _sum_nats(model, x, y, tb, experts.get(lang), device, batch_size)
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

# -----------------------------------------------------------------------------
# the comparison table


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
    pct = 100.0 * (v - base) / base
    return f"{pct:+.1f}%" if abs(pct) < 1e4 else f"{pct:+.0e}%"   # a base that never saw a language: +1e+05%


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
    cw = max(9, max(len(v) for v in variants) + 1)                # cell width

    def metric_block(metrics):
        rows = [(" " * lw + "".join(f" | {m:<{cw * len(variants) - 1}}" for m in metrics)).rstrip(),
                f"{'lang':<{lw}}" + "".join(" |" + "".join(f"{v:>{cw}}" for v in variants) for _ in metrics)]
        rows.append("-" * len(rows[-1]))
        for l in all_langs:
            rows.append(f"{l:<{lw}}" + "".join(" |" + "".join(
                f"{_fmt(m, results_by_variant[v].get(l, {}).get(m)):>{cw}}" for v in variants) for m in metrics))
        rows.append("-" * len(rows[-1]))
        rows.append(f"{'avg':<{lw}}" + "".join(" |" + "".join(
            f"{_fmt(m, summarize(results_by_variant[v], common)[m]):>{cw}}" for v in variants) for m in metrics))
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
# train.py's last step: every variant scored, the table, OUT/results.json

def true_groups(data_dir):
    """A corpus folder may know its right groups (DIR/families.json, as the planted world writes it): the
    list of language lists, or None."""
    path = os.path.join(data_dir or "", "families.json")
    if not data_dir or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)["true_groups"]


def report(cfg, env, dataset, lang_list, base_langs, names, grp, random_groups, t_start, order):
    """Evaluate every variant named (learned routing; MoE variants also forced to each language's group
    expert), print the table and write OUT/results.json (train.py's last step; `order`: its variants). A
    rerun with a --variants subset updates those variants' numbers and keeps the others'."""
    path = os.path.join(cfg["out"], "results.json")
    results = {"variants": {}, "forced_group": {}, "params": {}}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results.update(langs=lang_list, data_fingerprint=data_fingerprint(dataset),
                   groups=grp["groups"], moe_layers=grp["moe_layers"],
                   random_groups=random_groups,
                   # the profile's stability: similarities of the repeats (disjoint parts of the text; adam: other batches)
                   # correlated, and the groups each repeat alone gives, compared by adjusted Rand index
                   profile_stability={"repeat_corr": grp.get("repeat_corr"), "repeat_ari": grp.get("repeat_ari")})
    new_langs = [l for l in lang_list if l not in base_langs]
    results.update(base_langs=base_langs, new_langs=new_langs)
    truth = true_groups(cfg["data_dir"])     # a planted world knows the right groups
    if truth:
        results.update(true_groups=truth, true_groups_ari=group.adjusted_rand_index(grp["groups"], truth),
                       random_groups_ari=group.adjusted_rand_index(random_groups, truth))

    def scores(model, routing, lang_to_expert=None):
        res = evaluate(model, dataset, lang_list, split="val", block_size=cfg["block_size"],
                       max_windows=cfg["eval_windows"], routing=routing, lang_to_expert=lang_to_expert,
                       device=env.device)
        bad = [l for l, r in res.items() if not math.isfinite(r["loss"])]
        if bad:
            raise SystemExit(f"error: [{name}] the held-out loss of {','.join(bad)} is not finite; "
                             f"results.json is not written")
        return {l: {k: r[k] for k in ("loss", "ppl", "bpb", "tokens", "bytes")} for l, r in res.items()}
    for name in names:
        ckpt = load_checkpoint(os.path.join(cfg["out"], name + ".pt"))
        model = model_from_checkpoint(ckpt, env.device)
        results["variants"][name] = scores(model, "learned")
        results["params"][name] = model.num_params()
        if model.config.moe_layers:
            # every language forced to its own group's expert: how much the groups shaped the experts
            results["forced_group"][name] = scores(model, "group", ckpt["lang_to_expert"])
    for key in ("variants", "forced_group", "params"):
        results[key] = {v: results[key][v] for v in order if v in results[key]}
    results["minutes"] = round((time.time() - t_start) / 60, 2)
    results["config"] = cfg
    print()
    print(compare_table(results["variants"], baseline="cpt" if "cpt" in results["variants"] else "base",
                        params=results["params"]))
    if results["forced_group"]:
        forced = {v: summarize(r)["ppl"] for v, r in results["forced_group"].items()}
        print("\navg ppl with every language forced to its group's expert (learned routing above): "
              + ", ".join(f"{v} {p:.2f}" for v, p in forced.items()))
    if new_langs:   # the paper's situation: how the languages the base saw and the new ones fared
        results["by_langs"] = {part: {kind: {v: summarize(r, ls)["ppl"] for v, r in results[kind].items()}
                                      for kind in ("variants", "forced_group")}
                               for part, ls in (("seen", base_langs), ("new", new_langs))}
        print(f"\navg ppl over the {len(base_langs)} languages the base saw ({' '.join(base_langs)}) and the "
              f"{len(new_langs)} new to it ({' '.join(new_langs)}), learned routing [forced to the group's expert]:")
        for part in ("seen", "new"):
            by = results["by_langs"][part]
            print(f"  {part:5s} " + ", ".join(f"{v} {p:.2f}" + (f" [{by['forced_group'][v]:.2f}]" if v in by["forced_group"] else "")
                                              for v, p in by["variants"].items()))
    if truth:
        print(f"\nthe planted families {truth}: the profile's groups match them at adjusted Rand index "
              f"{results['true_groups_ari']:.2f} (1.00 = recovered exactly); the random variant's groups at "
              f"{results['random_groups_ari']:.2f}")
    save_json(results, path)
    print(f"\nwrote {path} ({results['minutes']} min)")
    return results


def load_results(path):
    """train.py's results.json (or a run directory holding one) as a dict; a one-line SystemExit when it
    is not JSON or not a results dict."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:  # missing, unreadable, not UTF-8, not JSON
        raise SystemExit(f"error: {path}: not a readable JSON file ({e.__class__.__name__}: {e})")
    if not isinstance(res, dict) or not isinstance(res.get("variants"), dict):
        raise SystemExit(f"error: {path}: not a train.py results.json (no 'variants' table)")
    return res

# -----------------------------------------------------------------------------
# command line

GENERIC_STEMS = {"ckpt", "model", "final", "last", "best", "checkpoint"}
VARIANT_ORDER = ["base", "cpt", "dmoe", "random", "all_layers"]   # train.py's variants, in pipeline order


def variant_rank(name):
    """Sort key: train.py's variants first, in pipeline order, a stage-1 name before its variant."""
    base = name[:-len("_stage1")] if name.endswith("_stage1") else name
    known = VARIANT_ORDER.index(base) if base in VARIANT_ORDER else len(VARIANT_ORDER)
    return known, base, 0 if name != base else 1


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
            out += sorted(files, key=lambda f: (variant_rank(_variant_name(f)), f))
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
    import data   # here: only the command line reads token files from disk
    return data.Dataset.load(path)


def each_checkpoint(paths, device, data_cache=None, langs=None, stages=False):
    """Yield (variant, path, ckpt, model, data, langs) for every readable checkpoint of `paths`, each with
    the tokens it was trained on (its config's data cache, or data_cache; a cache holding other tokens is
    refused in one line). An unreadable checkpoint is skipped with a line saying so."""
    datasets = {}
    for variant, path in find_checkpoints(paths, stages=stages):
        try:
            ckpt = load_checkpoint(path)
        except RuntimeError as e:
            print(f"skipping {path}: {e}")
            continue
        model = model_from_checkpoint(ckpt, device)
        cache = data_cache or find_data_cache(ckpt, path)
        if cache is None:
            raise SystemExit(f"error: {path}: no config['data_cache'] in the checkpoint; pass --data_cache DIR")
        if cache not in datasets:
            try:
                datasets[cache] = load_dataset(cache)
            except FileNotFoundError as e:
                raise SystemExit(f"error: {e} (or pass --data_cache DIR)")
        data = datasets[cache]
        if stale_data(ckpt, data):
            raise SystemExit(f"error: {path} was trained on other tokens than {cache} holds (another corpus or "
                             f"vocabulary); pass the --data_cache it was trained on")
        if langs:
            chosen = [l for l in langs.split(",") if l]
            missing = [l for l in chosen if l not in data.langs]
            if missing:
                raise SystemExit(f"error: {missing} not in {cache} (it has {','.join(data.langs)})")
        else:
            chosen = [l for l in (ckpt.get("langs") or data.langs) if l in data.langs]
        yield variant, path, ckpt, model, data, chosen


def sample(args):
    """Print a continuation of args.sample from every checkpoint, optionally routed to --sample_lang's expert."""
    from tokenizer import Tokenizer   # encoding text: the prepare step's tokenizer (evaluation only decodes)
    torch.manual_seed(0)
    for variant, path in find_checkpoints(args.paths):
        try:
            ckpt = load_checkpoint(path)
        except RuntimeError as e:
            raise SystemExit(f"error: {e}")
        model = model_from_checkpoint(ckpt, args.device).eval()
        tok = Tokenizer.from_state_dict(ckpt["vocab"])
        idx = torch.tensor([tok.encode(args.sample)], dtype=torch.long, device=args.device)  # (1, T)
        kw = {}
        lang_to_expert = ckpt.get("lang_to_expert") or {}
        if args.sample_lang and model.config.moe_layers:
            if args.sample_lang not in lang_to_expert:
                raise SystemExit(f"error: --sample_lang {args.sample_lang} not among {','.join(lang_to_expert)}")
            kw = dict(expert_ids=torch.tensor([lang_to_expert[args.sample_lang]], device=args.device), routing="group")
        out = model.generate(idx, args.sample_tokens, temperature=0.8, top_k=50, **kw)
        print(f"--- {variant} ({path})\n{tok.decode(out[0].tolist())}")


def check_cli(args):
    """The checks this CLI and analysis/report.py share, one line each, before anything is loaded."""
    check_device(args.device)
    if args.max_windows < 1 or args.batch_size < 1:
        raise SystemExit(f"error: --max_windows and --batch_size must be at least 1, got {args.max_windows} "
                         f"and {args.batch_size}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Per-language loss/ppl/bits-per-byte of nanoDMoE checkpoints "
                                "(routing analysis, pictures and seed summaries: analysis/report.py).")
    p.add_argument("paths", nargs="+", help="checkpoint files and/or run directories (searched for *.pt), "
                   "or results.json files (their table is printed)")
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
    p.add_argument("--sample", default=None, metavar="PROMPT", help="print a continuation of PROMPT instead")
    p.add_argument("--sample_tokens", type=int, default=60)
    p.add_argument("--sample_lang", default=None, help="route the sample to this language's expert (group routing)")
    p.add_argument("--device", default=default_device())
    args = p.parse_args(argv)
    check_cli(args)
    if args.sample is not None:
        if not args.sample:
            raise SystemExit("error: --sample needs a non-empty prompt")
        return sample(args)
    forced = re.fullmatch(r"expert:(\d+)", args.routing)
    if not (args.routing in ("learned", "group") or forced):
        p.error("--routing must be learned, group or expert:E")

    results, params = {}, {}
    jsons = [q for q in args.paths if q.endswith(".json")]  # a results.json is printed, not re-evaluated
    for q in jsons:
        saved = load_results(q)
        results.update(saved["variants"])
        params.update({v: n for v, n in (saved.get("params") or {}).items() if n is not None})
    ckpts = [q for q in args.paths if q not in jsons]
    for variant, path, ckpt, model, data, langs in each_checkpoint(ckpts, args.device, args.data_cache, args.langs,
                                                                   args.stages):
        moe = bool(model.config.moe_layers)
        lang_to_expert = ckpt.get("lang_to_expert")
        routing = "learned" if args.routing == "group" and not lang_to_expert else args.routing  # never grouped
        t0 = time.time()
        try:
            res = evaluate(model, data, langs, split=args.split, block_size=args.block_size,
                           max_windows=args.max_windows, routing="group" if routing == "group" else "learned",
                           lang_to_expert=lang_to_expert, force_expert=int(forced.group(1)) if forced else None,
                           device=args.device, batch_size=args.batch_size)
        except ValueError as e:  # expert id out of range, a split shorter than one window, ...
            raise SystemExit(f"error: {path}: {e}")
        results[variant] = res
        params[variant] = model.num_params()
        s = summarize(res)
        kind = f"MoE {model.config.n_experts} experts in layers {model.config.moe_layers}" if moe else "dense"
        done = "" if ckpt.get("done", True) else ", unfinished"
        print(f"{variant:<12} {path}  [{ckpt.get('stage', '?')}{done}, {kind}, routing {routing if moe else '-'}] "
              f"avg ppl {_fmt('ppl', s['ppl'])} bpb {_fmt('bpb', s['bpb'])} ({s['tokens']:,} tokens, {time.time() - t0:.1f}s)")
    if not results:
        raise SystemExit(f"error: nothing evaluated ({', '.join(args.paths)}): no readable checkpoint or results")
    print()
    if ckpts:
        print(f"split {args.split} | routing {args.routing} (MoE checkpoints) | up to {args.max_windows} windows "
              f"per language | {args.device}")
    print(compare_table(results, baseline=args.baseline, params=params))
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("\ninterrupted: nothing was written; run the same command again")
