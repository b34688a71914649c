"""
Why keep_out cannot keep the old languages still: how often an old language's tokens reach the new expert.

keep_out trains only the new expert (its router row is fitted once and kept fixed), so an old token
that does not choose the new expert in any layer is computed exactly as before adaptation. Every change
in an old language's perplexity comes from the tokens that the learned router sends to the new expert
(it is in their top-k). This script measures, for each old language, that share in every MoE layer
and the language's perplexity change.

    python experiments/default_grouped/adapt_leak.py runs/adapt/def_s0_be_sr/adapt_keep_out.pt \
        --out experiments/default_grouped/adapt_leak_be_sr.json

The source model (--from of the adaptation) and its data come from the checkpoint.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data  # noqa: E402
from common import save_json  # noqa: E402
from eval import evaluate  # noqa: E402
from model import load_checkpoint, model_from_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="an adapt_keep_out.pt (any adapted checkpoint whose source model is its --from)")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows per language (train.py's eval_windows)")
    ap.add_argument("--out", default="", help="write the numbers here as JSON")
    a = ap.parse_args()
    ck = load_checkpoint(a.ckpt)
    src = load_checkpoint(ck["config"]["adapt_from"])
    after, before = model_from_checkpoint(ck, "cpu"), model_from_checkpoint(src, "cpu")
    old = data.Dataset.load(src["config"]["data_cache"])
    new_e = after.config.n_experts - 1

    reach = []   # per forward: one row per MoE layer, 1 where the new expert is in a token's top-k
    hooks = [moe.register_forward_pre_hook(lambda mod, args: reach[-1].append(
        (mod.router_logits(args[0]).topk(mod.top_k, -1).indices == new_e)
        .any(-1).float())) for moe in after.moe_modules()]
    hooks.append(after.register_forward_pre_hook(lambda mod, args: reach.append([])))   # a new row per forward
    rows = {}
    print(f"{'lang':<5} {'ppl before':>10} {'after':>8} {'change':>8}   share of tokens whose top-{after.config.top_k} "
          f"holds the new expert, by MoE layer")
    for lang in src["langs"]:
        reach.clear()
        p_after = evaluate(after, old, [lang], max_windows=a.windows)[lang]["ppl"]
        p_before = evaluate(before, old, [lang], max_windows=a.windows)[lang]["ppl"]
        share = [float(torch.cat([f[i] for f in reach]).mean()) for i in range(len(after.moe_modules()))]
        rows[lang] = {"ppl_before": p_before, "ppl_after": p_after, "reach": share}
        print(f"{lang:<5} {p_before:10.2f} {p_after:8.2f} {100 * (p_after / p_before - 1):+7.2f}%   "
              + " ".join(f"{100 * s:5.1f}%" for s in share))
    for h in hooks:
        h.remove()
    if a.out:
        save_json({"command": "python " + " ".join(sys.argv), "ckpt": a.ckpt,
                   "new_langs": [l for l in ck["langs"] if l not in src["langs"]],
                   "copied_from": ck.get("meta", {}).get("copied"), "langs": rows}, a.out)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
