"""
Which targets carry the family signal of a planted run's profile? The gradient of the FFN weights (both
layers) on 700 windows of each language's training text, split by the token being predicted: the words,
the '.' that ends a sentence, and the language markers. Prints each part's mean norm, its language
similarity and the groups that similarity gives, beside the planted families (docs/EXPERIMENTS.md §4).

    python experiments/planted/gradient_by_target.py RUN/base.pt [--windows 700]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data  # noqa: E402
import group  # noqa: E402
from corpora.planted import MARKERS  # noqa: E402
from model import load_checkpoint, model_from_checkpoint  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--windows", type=int, default=700)
    a = p.parse_args()
    ck = load_checkpoint(a.ckpt)
    model = model_from_checkpoint(ck)
    ds = data.Dataset.load(ck["config"]["data_cache"])
    with open(os.path.join(ck["config"]["data_dir"], "families.json")) as f:
        families = json.load(f)["true_groups"]
    params = dict(model.named_parameters())
    names = [n for n in params if ".ffn." in n]
    tok, T = ds.tokenizer, model.config.block_size
    period = torch.tensor([i for i in range(tok.vocab_size) if tok.decode([i]) == "."])
    markers = torch.tensor([i for i in range(tok.vocab_size) if tok.decode([i]).strip() in MARKERS])

    def gradient(lang, part):
        n = min(a.windows, (len(ds.tokens(lang, "train")) - 1) // T)
        x = torch.from_numpy(ds.tokens(lang, "train")[:n * T + 1].astype(np.int64))
        X, Y = x[:-1].view(n, T), x[1:].view(n, T)
        g = [torch.zeros_like(params[k]) for k in names]
        for i in range(0, n, 100):
            logits, _, _ = model(X[i:i + 100])
            y = Y[i:i + 100]
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)
            mask = {"words": ~torch.isin(y, torch.cat([period, markers])), "period": torch.isin(y, period),
                    "markers": torch.isin(y, markers)}[part]
            for acc, gi in zip(g, torch.autograd.grad((ce * mask).sum() / (n * T), [params[k] for k in names])):
                acc += gi
        return torch.cat([t.flatten() for t in g]).numpy()

    for part in ("words", "period", "markers"):
        V = np.stack([gradient(l, part) for l in ds.langs])
        S = group.cosine_similarity(V)
        groups, _ = group.group_agglomerative(S, ds.langs, len(families))
        print(f"{part}: mean norm {np.linalg.norm(V, axis=1).mean():.4f}; groups {groups} "
              f"(ARI {group.adjusted_rand_index(groups, families):.2f} against the planted families)")
        print(np.round(S, 2))
    print("planted families", families)


if __name__ == "__main__":
    main()
