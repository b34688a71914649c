"""
A probe of planted worlds without the pipeline, ~2 minutes a point: a world like corpora/planted.py's
(token ids directly, one marker token per sentence), a dense base, then on the same schedule
  cpt   the dense model trained on;
  fam   the base upcycled in the MoE layers, one expert per family;
  rnd   the same with random groups of the same sizes (a fixed, fully mixed draw for F=3, P=3);
s1 = 0: the MoE trained with forced (group) routing for s2 steps and scored forced; s1 > 0: the pipeline's
two stages (s1 steps forced + router cross-entropy 1.28, then s2 steps learned top-k + balance 0.02),
scored learned and forced (_f), and printed: the share of tokens whose top-1 expert is their group's.
Mean loss per word target (nats; markers excluded). Appends each point to runs/probe.jsonl.

    python experiments/planted/probe.py base=3000 s1=500 s2=500 k=2 V=512 DRIFT=0.1

experiments/planted/probe_runs.json holds the points of docs/EXPERIMENTS.md §4 (2026-12-06).
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from model import GPT, GPTConfig
from upcycle import upcycle

C = dict(V=256, K=(0.7, 0.1, 0.1, 0.1), F=3, P=3, DRIFT=0.2, SENT=8, N=40000, d=32, L=2, heads=2, T=64, B=32,
         base=1000, blr=1e-2, s2=500, lr=3e-3, moe="all", seed=0, ctx=1, s1=0, k=1)
for a in sys.argv[1:]:
    k, v = a.split("=", 1)
    C[k] = type(C[k])(eval(v)) if not isinstance(C[k], str) else v
torch.set_num_threads(2)
rng = np.random.default_rng(C["seed"])
V, K, NL = C["V"], C["K"], C["F"] * C["P"]
ctx = C["ctx"]  # order of the chain: successor depends on the last ctx words


def rows(n):
    t = np.zeros((n, V))
    for r in range(n):
        t[r, rng.choice(V, len(K), replace=False)] = K
    return t


nctx = V ** ctx
chains, fam_of = [], []
for f in range(C["F"]):
    fam = rows(nctx)
    for p in range(C["P"]):
        own = fam.copy()
        red = rng.choice(nctx, round(C["DRIFT"] * nctx), replace=False)
        own[red] = rows(len(red))
        chains.append(own)
        fam_of.append(f)
H = np.mean([-(c[c > 0] * np.log(c[c > 0])).sum() / nctx for c in chains])  # entropy per word (uniform ctx approx)


def walk(chain, n):
    cum = chain.cumsum(1)
    w = list(rng.integers(V, size=ctx))
    out = []
    for i in range(n):
        c = 0
        for j in range(ctx):
            c = c * V + w[-ctx + j]
        nxt = min(int((rng.random() > cum[c]).sum()), V - 1)
        w.append(nxt)
        out.append(nxt)
    return out


def stream(li, n):
    words = walk(chains[li], n)
    toks = []
    for i in range(0, len(words), C["SENT"]):
        toks.append(V + li)  # the language's marker
        toks.extend(words[i:i + C["SENT"]])
    return np.array(toks, dtype=np.int64)


t0 = time.time()
train = [stream(l, C["N"]) for l in range(NL)]
val = [stream(l, 8000) for l in range(NL)]
print(f"world {time.time()-t0:.1f}s, entropy/word {H:.3f} nats", flush=True)
vocab = V + NL
T, B = C["T"], C["B"]
g = torch.Generator().manual_seed(C["seed"])


def batch(data, langs, gen):
    li = torch.tensor(langs)[torch.randint(len(langs), (B,), generator=gen)]
    xs, ys = [], []
    for l in li.tolist():
        i = int(torch.randint(len(data[l]) - T - 1, (1,), generator=gen))
        xs.append(torch.from_numpy(data[l][i:i + T]))
        ys.append(torch.from_numpy(data[l][i + 1:i + T + 1]))
    return torch.stack(xs), torch.stack(ys), li


def train_(model, steps, lr, to_expert=None, routing="group", rc=0.0, bc=0.0):
    opt = model.configure_optimizers(0.01, lr, (0.9, 0.95), "cpu")
    gen = torch.Generator().manual_seed(C["seed"] + steps)
    model.train()
    for s in range(steps):
        warm = max(1, steps // 30)
        lrn = lr * (s + 1) / warm if s < warm else lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
        for gg in opt.param_groups:
            gg["lr"] = lrn
        x, y, li = batch(train, list(range(NL)), gen)
        eid = to_expert[li] if to_expert is not None else None
        _, loss, aux = model(x, y, expert_ids=eid, routing=routing if eid is not None else "learned")
        if rc: loss = loss + rc * aux["router_ce"]
        if bc: loss = loss + bc * aux["balance"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


@torch.no_grad()
def route_acc(model, m):
    """share of word-predicting tokens whose top-1 router choice is the group's expert, per MoE layer"""
    model.eval()
    outs = []
    hooks = [mo.register_forward_hook(lambda mod, inp, out: outs.append(mod.router_logits(inp[0]).argmax(-1)))
             for mo in model.moe_modules()]
    accs = np.zeros(len(hooks))
    for l in range(NL):
        d = val[l]
        n = (len(d) - 1) // T
        x = torch.from_numpy(d[:n * T]).view(n, T)[:32]
        outs.clear()
        model(x)
        for i, o in enumerate(outs):
            accs[i] += (o == int(m[l])).float().mean().item() / NL
    for h in hooks: h.remove()
    model.train()
    return [round(a, 3) for a in accs]


@torch.no_grad()
def evaluate(model, to_expert=None):
    model.eval()
    losses = []
    for l in range(NL):
        d = val[l]
        n = (len(d) - 1) // T
        x = torch.from_numpy(d[:n * T]).view(n, T)[:64]
        y = torch.from_numpy(d[1:n * T + 1]).view(n, T)[:64]
        eid = torch.full((len(x),), int(to_expert[l])) if to_expert is not None else None
        logits, _, _ = model(x, None, expert_ids=eid, routing="group" if eid is not None else "learned")
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(len(x), T)
        mask = (y < V)  # word predictions only (markers are deterministic positions)
        losses.append((ce * mask).sum().item() / mask.sum().item())
    model.train()
    return float(np.mean(losses))


torch.manual_seed(C["seed"])
cfg = GPTConfig(vocab_size=vocab, block_size=T, n_layer=C["L"], n_head=C["heads"], n_embd=C["d"])
t0 = time.time()
base = train_(GPT(cfg), C["base"], C["blr"])
res = {"base": evaluate(base)}
tb = time.time() - t0
print(f"base {res['base']:.4f} ({tb:.0f}s)", flush=True)
import copy
res["cpt"] = evaluate(train_(copy.deepcopy(base), C["s1"] + C["s2"], C["lr"]))
layers = list(range(C["L"])) if C["moe"] == "all" else [int(x) for x in C["moe"].split(",")]
fam = torch.tensor(fam_of)
perm = np.random.default_rng(C["seed"] + 99).permutation(NL)
rnd = torch.zeros(NL, dtype=torch.long)
for gi in range(C["F"]):
    rnd[perm[gi * C["P"]:(gi + 1) * C["P"]]] = gi
for name, m in (("fam", fam), ("rnd", rnd)):
    moe = upcycle(base, layers, C["F"], top_k=C["k"], seed=C["seed"])
    if C["s1"] == 0:
        res[name] = evaluate(train_(moe, C["s2"], C["lr"], m), m)
        continue
    moe = train_(moe, C["s1"], C["lr"], m, rc=1.28)
    res[name + "_s1f"] = evaluate(moe, m)
    print(name, "router acc after s1", route_acc(moe, m), flush=True)
    moe = train_(moe, C["s2"], C["lr"], None, bc=0.02)
    res[name] = evaluate(moe)
    res[name + "_f"] = evaluate(moe, m)
    print(name, "router acc after s2", route_acc(moe, m), flush=True)
print(json.dumps({k: round(v, 4) for k, v in res.items()}), f"H={H:.3f}", "rnd groups", rnd.tolist(), "fam", fam_of,
      f"| cpt-fam {100*(math.exp(res['cpt']-res['fam'])-1):+.1f}% rnd-fam {100*(math.exp(res['rnd']-res['fam'])-1):+.1f}%",
      f"{time.time()-t0:.0f}s", flush=True)
os.makedirs("runs", exist_ok=True)
with open("runs/probe.jsonl", "a") as f:
    f.write(json.dumps({"C": {k: v for k, v in C.items()}, "res": res, "H": H, "s": time.time() - t0}) + "\n")
