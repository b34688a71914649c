"""
Benchmarks, measured in this one run (ratios are only meaningful within a run, on one machine):
  1. the MoE layer, forward + backward, top-2 learned routing: the naive Python loop over experts vs the
     fused dispatch (padded-bmm fallback, and grouped_mm where available), same weights, E = 2, 9, 16;
  2. training throughput (forward + backward + AdamW step) of the default-size model (train.py's: d = 64,
     4 layers, block 128, batch 16): dense vs MoE in every layer with 9 experts, under learned top-2
     routing and under group routing.

    python bench.py                                      # CPU fp32, ~1 minute on 2 idle cores
    python bench.py --threads 1                          # steadier numbers on a shared machine
    python bench.py --device cuda --dtype bfloat16 --compile --tokens 16384 --batch_size 32
"""

import argparse
import platform
import time
from contextlib import nullcontext

import torch

from model import GPT, MLP, GPTConfig, MoE, grouped_mm

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bf16 = autocast")
ap.add_argument("--compile", action="store_true", help="torch.compile(dynamic=False) layer and model")
ap.add_argument("--tokens", type=int, default=2048, help="tokens per MoE-layer call (part 1)")
ap.add_argument("--experts", default="2,9,16", help="expert counts for part 1")
ap.add_argument("--n_embd", type=int, default=64, help="model width (both parts)")
ap.add_argument("--n_layer", type=int, default=4)
ap.add_argument("--n_head", type=int, default=2)
ap.add_argument("--vocab_size", type=int, default=8192)
ap.add_argument("--block_size", type=int, default=128)
ap.add_argument("--batch_size", type=int, default=16, help="sequences per training step (part 2)")
ap.add_argument("--moe_layers", default="0,1,2,3", help="MoE layers of the part-2 MoE model")
ap.add_argument("--moe_experts", type=int, default=9, help="experts of the part-2 MoE model")
ap.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (after warmup)")
ap.add_argument("--skip", default="", help="'layer' or 'model' to skip a part")
ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

device, dev_type = args.device, torch.device(args.device).type
autocast = torch.autocast(dev_type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()
maybe_compile = (lambda m: torch.compile(m, dynamic=False)) if args.compile else (lambda m: m)
torch.manual_seed(0)


def sync():
    if dev_type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, iters=args.iters, warmup=2):
    """Median seconds per call of fn(), after warmup calls (compilation happens there).
    The median, not the mean: on a shared machine one slow call should not move the number."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


if dev_type == "cuda":
    dev_name = torch.cuda.get_device_name()
else:
    dev_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
print(f"torch {torch.__version__} | device {device} ({dev_name}) | dtype {args.dtype} | compile {args.compile}"
      f" | grouped_mm {'available' if grouped_mm is not None else 'missing'}")

# -----------------------------------------------------------------------------
# 1. the MoE layer: loop over experts vs fused dispatch

if "layer" not in args.skip:
    C, N = args.n_embd, args.tokens
    T = min(256, N)
    print(f"\n1. MoE layer forward+backward, top-2 learned routing, {N} tokens, d={C} (ms per call)")
    impls = ["loop", "padded"] + (["grouped_mm"] if grouped_mm is not None else [])
    x = torch.randn(N // T, T, C, device=device, requires_grad=True)
    grad = torch.randn(N // T, T, C, device=device)

    mlp = maybe_compile(MLP(GPTConfig(n_embd=C)).to(device))

    def step_mlp():
        with autocast:
            y = mlp(x)
        y.backward(grad.to(y.dtype))

    dense_ms = timeit(step_mlp) * 1e3
    print(f"   (reference: one dense FFN of the same size on the same tokens: {dense_ms:.1f} ms;"
          f" top-2 does twice its FLOPs)")
    print(f"   {'E':>3} | " + " | ".join(f"{i:>10}" for i in impls) + " | loop / fused")
    for E in [int(e) for e in args.experts.split(",")]:
        moe = MoE(GPTConfig(n_embd=C, moe_layers=[0], n_experts=E, top_k=2)).to(device)
        ms = {}
        for impl in impls:
            moe.impl = impl
            # the loop's shapes follow the routing, so it always runs eagerly
            layer = moe if impl == "loop" else maybe_compile(moe)

            def step():
                with autocast:
                    y, aux = layer(x)
                (y * grad.to(y.dtype)).sum().add(aux["balance"]).backward()

            ms[impl] = timeit(step) * 1e3
            if args.compile:
                torch._dynamo.reset()
        best = min(v for k, v in ms.items() if k != "loop")
        print(f"   {E:>3} | " + " | ".join(f"{ms[i]:>10.1f}" for i in impls) + f" | {ms['loop'] / best:>8.2f}x")

# -----------------------------------------------------------------------------
# 2. training throughput: dense vs MoE (learned top-2, group routing)

if "model" not in args.skip:
    B, T = args.batch_size, args.block_size
    base = dict(vocab_size=args.vocab_size, block_size=T, n_layer=args.n_layer, n_head=args.n_head,
                n_embd=args.n_embd)
    moe_layers = [int(l) for l in args.moe_layers.split(",")]
    E = args.moe_experts
    print(f"\n2. training step (fwd+bwd+AdamW), B={B}, T={T}, {args.n_layer} layers, d={args.n_embd}, "
          f"vocab {args.vocab_size}; MoE = layers {moe_layers} x {E} experts")
    idx = torch.randint(0, args.vocab_size, (B, T), device=device)
    groups = torch.randint(0, E, (B,), device=device)  # a mixed batch: sequences of different groups
    runs = [("dense", {}, "learned"),
            ("moe top-2 learned", dict(moe_layers=moe_layers, n_experts=E, top_k=2), "learned"),
            ("moe group routing", dict(moe_layers=moe_layers, n_experts=E, top_k=2), "group")]
    results = []
    for name, extra, routing in runs:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**base, **extra)).to(device)
        opt = model.configure_optimizers(0.01, 1e-4, (0.9, 0.95), dev_type)
        fwd = maybe_compile(model)

        def train_step():
            with autocast:
                _, loss, aux = fwd(idx, idx, expert_ids=groups, routing=routing)
            if "balance" in aux:
                loss = loss + 0.02 * aux["balance"]
            if "router_ce" in aux and routing == "group":
                loss = loss + 1.28 * aux["router_ce"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        dt = timeit(train_step)
        results.append((name, model.num_params(), dt))
        if args.compile:
            torch._dynamo.reset()
    dense_tps = B * T / results[0][2]
    print(f"   {'model':<18} | {'params':>11} | {'ms/step':>8} | {'tok/s':>8} | vs dense")
    for name, n, dt in results:
        print(f"   {name:<18} | {n:>11,} | {dt * 1e3:>8.1f} | {B * T / dt:>8,.0f} | {B * T / dt / dense_tps:.2f}x")
