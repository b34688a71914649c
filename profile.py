"""
Parameter-deviation profiling of languages (docs/METHOD.md §2).

For each language x: how far would the dense model's weights move if it learned x alone, Δθ^x?
  gradient (the default): one SGD step's worth, -lr * the gradient of x's loss on fixed windows of its text;
  adam (the paper's): copy the model, fine-tune ALL its parameters on x alone for a few AdamW steps, θ^x - θ.
Then:
  ffn_dev[x][l]  = ||ΔW_FFN,l||_2   the layer's two FFN weight matrices, flattened together (no biases)
  attn_dev[x][l] = ||ΔW_attn,l||_2  the layer's attention weights (qkv + output projection, no biases)
  v^x            = the FFN weight deltas of the last `last_layers` layers, flattened: the language's
                   deviation vector; similarity(x, y) = cos(v^x, v^y)  (group.cosine_similarity)
group.py turns this into MoE layers (from ffn_dev) and language groups (from the similarity).

Usage (every setting not given is the run's, read from the checkpoint: the profile train.py made):
  python profile.py --ckpt out/base.pt --out profile.json
  python profile.py --ckpt out/base.pt --out p_adam.json --method adam     # the paper's way
"""

# -----------------------------------------------------------------------------
# This file is named profile.py and so shadows the standard library's `profile` module whenever the
# repository root is on sys.path (`python train.py`, pytest from the root). The stdlib `cProfile` does
# `import profile as _pyprofile` and calls `_pyprofile._Utils(...)`, `_pyprofile.run.__doc__`, ... and
# torch imports cProfile (via torch._dynamo) the first time an optimizer is built. So load the real
# stdlib module from the stdlib directory under a private name and re-export what it offers; this
# module then works as both. Nothing below may redefine run / runctx / Profile / _Utils / main.
import importlib.util as _importlib_util
import os
import sys
import sysconfig as _sysconfig

def _load_stdlib_profile():
    path = os.path.join(_sysconfig.get_paths()["stdlib"], "profile.py")
    spec = _importlib_util.spec_from_file_location("_stdlib_profile", path)
    mod = _importlib_util.module_from_spec(spec)
    sys.modules["_stdlib_profile"] = mod  # so that its classes pickle / introspect normally
    spec.loader.exec_module(mod)
    return mod

_stdlib_profile = sys.modules.get("_stdlib_profile") or _load_stdlib_profile()
for _name in list(getattr(_stdlib_profile, "__all__", [])) + ["_Utils", "main"]:
    if hasattr(_stdlib_profile, _name):
        globals()[_name] = getattr(_stdlib_profile, _name)
# -----------------------------------------------------------------------------

import argparse
import copy
import math
import time

import numpy as np
import torch

import group
from common import save_json

# -----------------------------------------------------------------------------
# which weights count

def default_last_layers(n_layer):
    """How many final layers form the deviation vector. The paper used the last 3 of 24 layers, i.e.
    the last eighth of the depth, where the model is most language-specific (next to the output). We
    keep that fraction, rounded up and at least one: 24 -> 3, 12 -> 2, 4..8 -> 1. In a small model one
    layer is already a large share of the depth and its FFN (2 * d * 4d weights, 524k at d=256) gives
    plenty of dimensions for a cosine; adding middle layers would mix in language-shared computation."""
    return max(1, math.ceil(n_layer * 3 / 24))

def layer_weights(model):
    """Names of the weights whose deviation we measure, per transformer block (in depth order):
    [(ffn_names, attn_names), ...]. A block is any module with an `attn` and an `ffn` (or nanoGPT's
    `mlp`); we take their parameters with ndim >= 2, i.e. weight matrices, no biases, and no MoE
    router (on a dense model: c_fc.weight + c_proj.weight, and c_attn.weight + c_proj.weight)."""
    layers = []
    for bname, block in model.named_modules():
        fname = "ffn" if isinstance(getattr(block, "ffn", None), torch.nn.Module) else "mlp"
        ffn, attn = getattr(block, fname, None), getattr(block, "attn", None)
        if not (isinstance(ffn, torch.nn.Module) and isinstance(attn, torch.nn.Module)):
            continue
        pre = bname + "." if bname else ""
        ffn_names = [f"{pre}{fname}.{n}" for n, p in ffn.named_parameters() if p.ndim >= 2 and "router" not in n]
        attn_names = [f"{pre}attn.{n}" for n, p in attn.named_parameters() if p.ndim >= 2]
        layers.append((ffn_names, attn_names))
    assert layers, "no transformer blocks (modules with .attn and .ffn) found in the model"
    return layers

# -----------------------------------------------------------------------------
# one fine-tuning run

def finetune_deltas(model, data, lang, names, steps, lr, batch_size, block_size, seed, device):
    """Fine-tune a copy of `model` on `lang` alone: AdamW over all trainable parameters, no weight
    decay, lr decayed linearly from `lr` to 0 over `steps` with no warmup (step t uses lr*(1-t/steps)),
    no gradient clipping. Batches come from a generator seeded with `seed` only, so every language sees
    the same sequence of random draws. Returns ({name: Δweight (fp32)}, [first loss, last loss])."""
    m = copy.deepcopy(model).to(device)
    m.train()
    before = {n: p.detach().float().clone() for n, p in m.named_parameters() if n in names}
    params = [p for p in m.parameters() if p.requires_grad]
    losses = [float("nan"), float("nan")]
    if steps > 0 and params:
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        fork = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=fork):  # dropout reproducible, caller's RNG untouched
            torch.manual_seed(seed)
            for step in range(steps):
                for pg in opt.param_groups:
                    pg["lr"] = lr * (1 - step / steps)
                x, y = data.get_batch("train", lang, batch_size, block_size, gen, device)  # (B, T) each
                out = m(x, y)
                loss = out[1] if isinstance(out, tuple) else out
                losses[0 if step == 0 else 1] = loss.item()
                if not math.isfinite(losses[0 if step == 0 else 1]):
                    raise FloatingPointError(f"{lang}: the fine-tuning loss is not finite at step {step + 1}")
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if steps == 1:
                losses[1] = losses[0]
    deltas = {n: p.detach().float() - before[n] for n, p in m.named_parameters() if n in names}
    if not all(torch.isfinite(d).all() for d in deltas.values()):
        raise FloatingPointError(f"{lang}: the fine-tuned weights are not finite after {steps} steps")
    return deltas, losses

def gradient_deltas(model, data, lang, names, lr, windows, block_size, device, batch_size=32, seed=0):
    """The better-conditioned estimate (docs/METHOD.md §2): the move of ONE plain gradient step with
    learning rate `lr` on a fixed sample of the language's text, Δθ = -lr * mean loss gradient over the
    `windows` (x, y) pairs. Every window of the sample counts (no batch noise); Adam's first
    steps instead move nearly every weight by about ±lr, the sign of a noisy gradient, which the cosine
    then mostly measures. The model is not changed; dropout (if any) draws from a generator seeded with
    `seed` alone, so that the estimate does not depend on what ran before it in the process (a resumed
    run profiles as an uninterrupted one). Returns ({name: Δweight (fp32)}, [loss, loss])."""
    x_all, y_all = windows
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    was_training = model.training
    model.train()
    total = 0.0
    fork = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=fork):  # dropout reproducible, caller's RNG untouched
        torch.manual_seed(seed)
        for i in range(0, len(x_all), batch_size):
            x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)  # (B, T) each
            _, loss, _ = model(x, y)
            weight = len(x) / len(x_all)
            total += loss.item() * weight
            g = torch.autograd.grad(loss * weight, [params[n] for n in names])
            for n, gn in zip(names, g):
                grads[n] += gn.float()
    model.train(was_training)
    if not math.isfinite(total) or not all(torch.isfinite(g).all() for g in grads.values()):
        raise FloatingPointError(f"{lang}: the loss or its gradient is not finite")
    return {n: -lr * g for n, g in grads.items()}, [total, total]

def text_split(data, lang, split, block_size):
    """The split the gradient estimate reads: `split`, unless it holds less than one window of this
    language (a user corpus has no parallel text), then the training text."""
    return split if len(data.tokens(lang, split)) > block_size else "train"

def _norm(deltas, names):
    return math.sqrt(sum(float(deltas[n].pow(2).sum()) for n in names))

# -----------------------------------------------------------------------------
# all languages

def profile_languages(model, data, langs, method="gradient", steps=10, lr=1e-4, batch_size=8, block_size=None,
                      last_layers=None, seed=0, device="cpu", repeats=2, windows=32, center=False,
                      split="parallel", progress=True, rank=0, world=1):
    """Profile every language in `langs` (docs/METHOD.md §2). `data` needs only
    get_batch(split, lang, batch_size, block_size, generator, device) -> (x, y), e.g. data.Dataset.

    The defaults are the pipeline's (train.py; docs/METHOD.md §2 says why they depart from the paper):
      method="gradient"  one step's gradient on fixed text (the deviation an lr-scaled SGD step makes);
                     "adam" is the paper's: `steps` AdamW steps of fine-tuning on the language alone
                     (the paper: 10 steps, lr 8e-6, batch 2048 x 512 tokens on BLOOM-560M).
      windows=32, split="parallel"  gradient: 32 windows of block_size tokens spread over the language's
                     held-out UDHR articles, the same content in every language (a corpus without
                     parallel text: its training text).
      repeats=2      gradient: the windows cut into 2 consecutive parts, one deviation each; adam:
                     independent batch draws (seeds seed, seed+1, ...). ffn_dev/attn_dev = mean over
                     repeats of the per-run norms, vectors = mean over repeats of the deltas; the
                     per-repeat similarities are returned so group.py can check that the groups are stable.
      lr=1e-4, steps=10, batch_size=8  the step size; adam's steps; sequences per step / forward pass.
      last_layers    None -> default_last_layers(n_layer) (the paper's last eighth, >= 1 layer).
    Memory: two (n_langs, vector_dim) float32 arrays on the CPU, plus one model copy at a time.
    Distributed (torchrun): rank r profiles languages r, r + world, ... and the results are gathered, so
    every rank returns the same dict (torch.distributed must be initialised when world > 1).

    Returns a JSON-able dict (except "vectors"):
      langs, n_layer, ffn_dev {lang: [L]}, attn_dev {lang: [L]}, ffn_dev_repeats {lang: [R][L]},
      vector_layers, similarity [[n x n]] (cosine of the mean vectors), similarity_repeats [R][n][n],
      repeat_corr (mean correlation of off-diagonal similarities between repeats; None if R == 1),
      loss {lang: [first step, last step]} (mean over repeats), config {...},
      vectors (n, dim) float32 np.ndarray — drop it before json.dump."""
    langs = list(langs)
    n = len(langs)
    assert n >= 1 and repeats >= 1 and steps >= 0 and method in ("adam", "gradient")
    assert method == "adam" or windows >= repeats, "every repeat needs at least one window"
    layers = layer_weights(model)
    L = len(layers)
    last_layers = default_last_layers(L) if last_layers is None else int(last_layers)
    assert 1 <= last_layers <= L, f"last_layers must be in 1..{L}, got {last_layers}"
    vector_layers = list(range(L - last_layers, L))
    vec_names = [name for l in vector_layers for name in layers[l][0]]
    names = {name for ffn, attn in layers for name in ffn + attn}
    if block_size is None:
        block_size = model.config.block_size
    params = dict(model.named_parameters())
    dim = sum(params[name].numel() for name in vec_names)

    vec_sum = np.zeros((n, dim), dtype=np.float32)
    vec_rep = np.zeros((n, dim), dtype=np.float32)
    ffn_dev = {l: [] for l in langs}
    attn_dev = {l: [] for l in langs}
    loss = {l: [] for l in langs}
    sims = []
    t0 = time.time()
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(langs[rank::world]) * repeats, desc="profile", disable=not progress, leave=False)
    except ImportError:
        bar = None
    # gradient: a fixed sample of each language's text, spread over it; repeat r reads its r-th of `repeats`
    # consecutive parts
    sample = {lang: data.spread_windows(lang, text_split(data, lang, split, block_size), block_size, windows)
              for lang in langs[rank::world]} if method == "gradient" else {}
    for r in range(repeats):
        mine = {}  # lang -> (ffn norms, attn norms, losses, deviation vector) for this rank's languages
        for lang in langs[rank::world]:
            if method == "gradient":
                x, y = sample[lang]
                deltas, losses = gradient_deltas(model, data, lang, sorted(names), lr,
                                                 (x.tensor_split(repeats)[r].contiguous(), y.tensor_split(repeats)[r].contiguous()),
                                                 block_size, device, batch_size, seed + r)
            else:
                deltas, losses = finetune_deltas(model, data, lang, names, steps, lr, batch_size, block_size,
                                                 seed + r, device)
            mine[lang] = ([_norm(deltas, f) for f, _ in layers], [_norm(deltas, a) for _, a in layers],
                          losses, torch.cat([deltas[name].flatten() for name in vec_names]).cpu().numpy())
            del deltas
            if bar is not None:
                bar.update(1)
                bar.set_postfix(repeat=r, lang=lang, loss=f"{losses[0]:.3f}->{losses[1]:.3f}")
        if world > 1:
            parts = [None] * world
            torch.distributed.all_gather_object(parts, mine)
            mine = {lang: res for part in parts for lang, res in part.items()}
        for i, lang in enumerate(langs):
            f, a, losses, vec = mine[lang]
            ffn_dev[lang].append(f)
            attn_dev[lang].append(a)
            loss[lang].append(losses)
            vec_rep[i] = vec
        vec_sum += vec_rep
        sims.append(similarity(vec_rep, center))
    if bar is not None:
        bar.close()
    vectors = vec_sum / repeats
    S = similarity(vectors, center)

    off = ~np.eye(n, dtype=bool)
    corr = None
    if repeats > 1 and n > 2:
        cs = [np.corrcoef(sims[a][off], sims[b][off])[0, 1]
              for a in range(repeats) for b in range(a + 1, repeats)]
        cs = [c for c in cs if np.isfinite(c)]
        corr = float(np.mean(cs)) if cs else None
    return {
        "langs": langs,
        "n_layer": L,
        "ffn_dev": {l: np.mean(ffn_dev[l], axis=0).tolist() for l in langs},
        "attn_dev": {l: np.mean(attn_dev[l], axis=0).tolist() for l in langs},
        "ffn_dev_repeats": ffn_dev,
        "vector_layers": vector_layers,
        "similarity": S.tolist(),
        "similarity_repeats": [s.tolist() for s in sims],
        "repeat_corr": corr,
        "loss": {l: np.mean(loss[l], axis=0).tolist() if steps > 0 else [None, None] for l in langs},
        "config": {"method": method, "steps": steps, "lr": lr, "batch_size": batch_size, "block_size": block_size,
                   "last_layers": last_layers, "repeats": repeats, "seed": seed, "windows": windows, "center": center,
                   "split": {l: text_split(data, l, split, block_size) for l in langs} if method == "gradient" else "train",
                   "tokens_per_lang": (windows if method == "gradient" else steps * batch_size * repeats) * block_size,
                   "seconds": round(time.time() - t0, 1)},
        "vectors": vectors,
    }

def similarity(vectors, center=False):
    """Cosine similarity of the languages' deviation vectors (n, dim); center=True first subtracts their
    mean, the move every language shares, so that what is compared is how each language departs from it."""
    V = np.asarray(vectors, dtype=np.float64)
    return group.cosine_similarity(V - V.mean(axis=0) if center else V)

# -----------------------------------------------------------------------------
# CLI (named cli, not main: `main` is the stdlib profile's, re-exported above)

# the profile's settings: CLI flag -> (the run's setting in a train.py checkpoint's config, profile_languages' name)
SETTINGS = {"method": ("profile_method", "method"), "steps": ("profile_steps", "steps"), "lr": ("profile_lr", "lr"),
            "batch_size": ("profile_batch", "batch_size"), "repeats": ("profile_repeats", "repeats"),
            "windows": ("profile_windows", "windows"), "split": ("profile_split", "split"),
            "center": ("profile_center", "center"), "last_layers": ("last_layers", "last_layers"),
            "block_size": ("block_size", "block_size"), "seed": ("seed", "seed")}
GROUPING = ("n_groups", "group_method", "eps", "seed")   # the run's grouping settings, passed on to group.py


def cli(argv=None):
    p = argparse.ArgumentParser(description="Per-language parameter deviation profile of a dense checkpoint. "
                                "Every setting not given is the run's (from the checkpoint), so that "
                                "`python profile.py --ckpt RUN/base.pt --out p.json` measures what train.py did.")
    p.add_argument("--ckpt", required=True, help="dense checkpoint (e.g. out/base.pt)")
    p.add_argument("--data_cache", default=None, help="token files (default: the run's, from the checkpoint)")
    p.add_argument("--out", default="profile.json")
    p.add_argument("--langs", default="", help="comma-separated subset (default: the checkpoint's languages)")
    p.add_argument("--method", default=None, choices=("gradient", "adam"))
    p.add_argument("--steps", type=int, default=None, help="adam: fine-tuning steps per language")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=None, help="sequences per step / per forward pass")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--windows", type=int, default=None, help="gradient: windows per language")
    p.add_argument("--split", default=None, choices=("parallel", "train"), help="gradient: the text it reads")
    p.add_argument("--center", default=None, choices=("True", "False"), help="subtract the mean deviation")
    p.add_argument("--block_size", type=int, default=None, help="default: the run's (or the model's)")
    p.add_argument("--last_layers", type=int, default=None, help="0 = the paper's last eighth (>= 1 layer)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--vectors", default="", help="also save the deviation vectors to this .npy file")
    args = p.parse_args(argv)

    from data import Dataset  # imported here: the core function needs neither module
    from model import load_checkpoint, model_from_checkpoint

    from common import check_device, data_fingerprint, find_data_cache, stale_data, unwritable
    for flag, path in (("--out", args.out), ("--vectors", args.vectors)):
        why = path and unwritable(path)
        if why:
            raise SystemExit(f"error: {flag} {path} {why}; give a file path")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    check_device(device)
    try:
        ckpt = load_checkpoint(args.ckpt, device="cpu")
    except RuntimeError as e:
        raise SystemExit(f"error: {e}")
    run = ckpt.get("config") or {}          # the run's settings; a flag given overrides one
    kw = {name: run[key] for flag, (key, name) in SETTINGS.items() if key in run}
    kw.update({name: getattr(args, flag) for flag, (_, name) in SETTINGS.items() if getattr(args, flag) is not None})
    if isinstance(kw.get("center"), str):
        kw["center"] = kw["center"] == "True"
    kw["last_layers"] = kw.get("last_layers") or None
    for k in ("steps", "batch_size", "repeats", "windows"):
        if kw.get(k, 1) < 1:
            raise SystemExit(f"error: --{k} must be at least 1, got {kw[k]}")
    if not (math.isfinite(kw.get("lr", 1.0)) and kw.get("lr", 1.0) > 0):
        raise SystemExit(f"error: --lr must be a positive number, got {kw['lr']}")
    cache = args.data_cache or find_data_cache(ckpt, args.ckpt)
    if cache is None:
        raise SystemExit(f"error: {args.ckpt} does not name its data cache; pass --data_cache DIR")
    try:
        data = Dataset.load(cache)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    if ckpt["model_args"].get("moe_layers"):
        raise SystemExit(f"error: {args.ckpt} is an MoE checkpoint; the profile measures a dense one (out/base.pt)")
    if stale_data(ckpt, data):
        raise SystemExit(f"error: {args.ckpt} was trained on other tokens than {cache} holds (another corpus "
                         f"or vocabulary); pass the --data_cache it was trained on")
    n_layer = ckpt["model_args"]["n_layer"]
    if kw["last_layers"] is not None and not 1 <= kw["last_layers"] <= n_layer:
        raise SystemExit(f"error: --last_layers {kw['last_layers']}: choose 1..{n_layer} (the model's layers), "
                         f"or 0 for the paper's last eighth")
    if not 2 <= (kw.get("block_size") or ckpt["model_args"]["block_size"]) <= ckpt["model_args"]["block_size"]:
        raise SystemExit(f"error: --block_size {kw['block_size']}: choose 2..{ckpt['model_args']['block_size']} "
                         f"(the model's)")
    if kw.get("method", "gradient") == "gradient" and kw.get("windows", 32) < kw.get("repeats", 2):
        raise SystemExit("error: --windows must be at least --repeats (every part needs a window)")
    langs = [l for l in args.langs.split(",") if l] or ckpt.get("langs") or data.langs
    unknown = [l for l in langs if l not in data.langs]
    if unknown:
        raise SystemExit(f"error: --langs {','.join(unknown)}: not in {cache} (it has {','.join(data.langs)})")
    model = model_from_checkpoint(ckpt, device)
    prof = profile_languages(model, data, langs, device=device, **kw)
    vectors = prof.pop("vectors")
    prof["data_fingerprint"] = data_fingerprint(data)
    prof["grouping"] = {k: run[k] for k in GROUPING if k in run}
    seen = ckpt.get("sampled_langs") or langs   # under --new_experts own, the languages the base never saw are alone
    prof["grouping"]["alone"] = [l for l in langs if l not in seen] if run.get("new_experts") == "own" else []
    save_json(prof, args.out)
    S = np.asarray(prof["similarity"])
    near = {l: langs[int(np.argmax(np.where(np.eye(len(langs), dtype=bool), -np.inf, S)[i]))] for i, l in enumerate(langs)}
    print("nearest neighbour: " + "  ".join(f"{l}->{m}" for l, m in near.items()))
    print(f"wrote {args.out} (heatmap and per-layer bars: python analysis/console.py {args.out})")
    if args.vectors:
        np.save(args.vectors, vectors)
        print(f"wrote {args.vectors} {vectors.shape}")
    return prof

if __name__ == "__main__":
    try:
        cli()
    except KeyboardInterrupt:
        raise SystemExit("\ninterrupted: nothing was written; run the same command again")
