"""
Can anything token-local tell a new language's tokens from its neighbours'? The limit of keep_out.

keep_out (adapt.py) keeps an old token exactly as before unless the new expert's router row puts the new
expert in the token's top-k. This probe asks how well the best linear classifier on three kinds of input
can separate the new languages' tokens from each old language's, on held-out text:
    token    the router input of the token itself (what a router row sees), each MoE layer
    prefix   the router input plus the mean of the router inputs over the prefix (the sequence so far)
    unigram  the mean over the prefix of a learned score per vocabulary id (a language identifier)
Each is a logistic regression fitted on the same training text (every language weighing alike) and
scored on the held-out windows: the share of an old language's tokens taken for new, and of the new
languages' tokens recognised.

    python experiments/default_grouped/adapt_separable.py runs/def9/s0/dmoe.pt be,sr --out experiments/default_grouped/adapt_separable_be_sr.json
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data  # noqa: E402
from common import save_json  # noqa: E402
from adapt import new_language_cache  # noqa: E402
from model import load_checkpoint, model_from_checkpoint, prefix_mean  # noqa: E402


def logistic(X, y, weight, steps=300):
    """Weighted logistic regression by L-BFGS on standardised features; returns a scorer."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    w, b = torch.zeros(X.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    Xs = (X - mu) / sd

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(Xs @ w + b, y, reduction="none") * weight).sum() + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lambda Z: ((Z - mu) / sd @ w + b).detach() > 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="a trained MoE checkpoint (e.g. runs/def9/s0/dmoe.pt)")
    ap.add_argument("new", help="the new languages, e.g. be,sr (their cache must exist: run adapt.py once)")
    ap.add_argument("--seqs", type=int, default=48, help="training sequences per language")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows per language")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    ck = load_checkpoint(a.ckpt)
    model = model_from_checkpoint(ck, "cpu").eval()
    T, old = ck["config"]["block_size"], data.Dataset.load(ck["config"]["data_cache"])
    new_langs = a.new.split(",")
    new = data.Dataset.load(new_language_cache(a.new, ck["config"]["vocab_size"], ck["config"]["data_seed"], None,
                                               os.path.dirname(os.path.abspath(a.ckpt))))
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].float())) for m in model.moe_modules()]

    @torch.no_grad()
    def inputs(x):   # (B, T) ids -> per MoE layer (B, T, C) router inputs, the model as it runs
        seen.clear()
        model(x, routing="learned")
        return list(seen)
    gen = torch.Generator().manual_seed(0)
    langs = old.langs + new_langs
    train, held = {}, {}
    for lang in langs:
        d = new if lang in new_langs else old
        train[lang] = torch.cat([d.get_batch("train", lang, 16, T, gen)[0] for _ in range(a.seqs // 16)])
        held[lang] = d.eval_windows(lang, "val", T, a.windows)[0]
    y = torch.cat([torch.full((len(train[l]) * T,), float(l in new_langs)) for l in langs])
    wt = torch.cat([torch.full((len(train[l]) * T,), 1.0 / (len(train[l]) * T * len(langs))) for l in langs])
    feats = {"token": lambda h: h, "prefix": lambda h: torch.cat([h, prefix_mean(h)], -1)}
    res = {}
    h_train = {l: inputs(x) for l, x in train.items()}
    h_held = {l: inputs(x) for l, x in held.items()}
    for kind, f in feats.items():
        for i in range(len(model.moe_modules())):
            X = torch.cat([f(h_train[l][i]).flatten(0, 1) for l in langs])
            is_new = logistic(X, y, wt)
            res[f"{kind} layer {i}"] = {l: float(is_new(f(h_held[l][i]).flatten(0, 1)).float().mean()) for l in langs}
    # unigram: a score per vocabulary id, averaged over the prefix
    u, b = torch.zeros(ck["config"]["vocab_size"], requires_grad=True), torch.zeros(1, requires_grad=True)
    Xu = torch.cat([train[l] for l in langs])
    yu = torch.cat([torch.full((len(train[l]), T), float(l in new_langs)) for l in langs])
    wu = torch.cat([torch.full((len(train[l]), T), 1.0 / (len(train[l]) * T * len(langs))) for l in langs])
    opt = torch.optim.Adam([u, b], lr=0.05)
    for _ in range(400):
        loss = (F.binary_cross_entropy_with_logits(prefix_mean(u[Xu, None])[..., 0] + b, yu, reduction="none") * wu).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        res["unigram"] = {l: float(((prefix_mean(u[x, None])[..., 0] + b) > 0).float().mean()) for l, x in held.items()}
    for h in hooks:
        h.remove()
    print(f"{'classifier':<16} " + " ".join(f"{l:>5}" for l in langs) + "   (% of held-out tokens taken for new)")
    for k, r in res.items():
        print(f"{k:<16} " + " ".join(f"{100 * r[l]:5.1f}" for l in langs))
    if a.out:
        save_json({"command": "python " + " ".join(sys.argv), "new_langs": new_langs, "taken_for_new": res}, a.out)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
