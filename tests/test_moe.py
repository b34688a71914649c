"""The MoE layer: fused dispatch == naive per-expert loop, group routing, balance loss, one compile."""

import pytest
import torch
import torch.nn.functional as F

from model import MLP, GPTConfig, MoE, grouped_mm

C, E = 32, 4
FUSED_IMPLS = ["padded"] + (["grouped_mm"] if grouped_mm is not None else [])


def make_moe(seed=0, bias=True, n_experts=E, top_k=2):
    torch.manual_seed(seed)
    moe = MoE(GPTConfig(n_embd=C, n_layer=2, bias=bias, moe_layers=[0], n_experts=n_experts, top_k=top_k))
    with torch.no_grad():  # non-zero biases, so that a wrong bias row would show
        for b in (moe.b_fc, moe.b_proj):
            if b is not None:
                b.normal_(std=0.1)
    return moe


def run(moe, impl, x, groups=None, routing="learned"):
    """Output and the gradients of a fixed random projection of it, with moe.impl = impl."""
    moe.impl = impl
    moe.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y, aux = moe(x, groups, routing)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    ((y * g).sum() + aux.get("balance", 0) + aux["z"]).backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads, aux


def assert_same(a, b, atol=1e-5):
    ya, xga, ga, _ = a
    yb, xgb, gb, _ = b
    torch.testing.assert_close(ya, yb, atol=atol, rtol=1e-5)
    torch.testing.assert_close(xga, xgb, atol=atol, rtol=1e-5)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=atol, rtol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_matches_loop_learned(impl, bias):
    moe = make_moe(bias=bias)
    x = torch.randn(3, 10, C)
    ref = run(moe, "loop", x)
    out = run(moe, impl, x)
    assert_same(out, ref)
    assert out[2]["router.weight"].abs().sum() > 0  # the router learns through the gate weights


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_fused_matches_loop_with_an_idle_expert(impl):
    moe = make_moe()
    x = torch.randn(2, 12, C)
    x[..., 0] = 3.0  # a constant feature ...
    with torch.no_grad():
        moe.router.weight[2, 0] = -20.0  # ... that expert 2's router row strongly dislikes
    ref = run(moe, "loop", x)
    out = run(moe, impl, x)
    assert out[3]["expert_counts"][2] == 0
    assert out[3]["expert_counts"].sum() == 2 * 12 * 2  # N tokens * top-2 slots
    assert_same(out, ref)
    assert out[2]["w_fc"][2].abs().sum() == 0  # an idle expert gets exactly zero gradient


def test_top1_and_all_experts():
    # k = 1 (Switch) and k = E (every expert) through the same dispatch
    for k in (1, E):
        moe = make_moe(top_k=k)
        x = torch.randn(2, 8, C)
        assert_same(run(moe, FUSED_IMPLS[-1], x), run(moe, "loop", x))


def expert_as_mlp(moe, e):
    """Expert e of the MoE as a plain dense MLP module (its own forward, no MoE code involved)."""
    mlp = MLP(GPTConfig(n_embd=C, bias=moe.b_fc is not None))
    with torch.no_grad():
        mlp.c_fc.weight.copy_(moe.w_fc[e].t())
        mlp.c_proj.weight.copy_(moe.w_proj[e].t())
        if moe.b_fc is not None:
            mlp.c_fc.bias.copy_(moe.b_fc[e])
            mlp.c_proj.bias.copy_(moe.b_proj[e])
    return mlp


@pytest.mark.parametrize("impl", FUSED_IMPLS + ["loop"])
def test_group_routing_sends_each_sequence_to_its_expert(impl):
    moe = make_moe()
    moe.impl = impl
    x = torch.randn(5, 7, C)
    groups = torch.tensor([2, 0, 2, 3, 0])  # a mixed batch; expert 1 gets nothing
    y, aux = moe(x, groups, "group")
    for b, e in enumerate(groups.tolist()):
        torch.testing.assert_close(y[b], expert_as_mlp(moe, e)(x[b]), atol=1e-5, rtol=1e-5)
    assert aux["expert_counts"].tolist() == [14, 0, 14, 7]
    assert "balance" not in aux  # only defined for learned routing
    # router CE against the group id, averaged over all tokens
    logits = x.reshape(-1, C) @ moe.router.weight.t()
    torch.testing.assert_close(aux["router_ce"], F.cross_entropy(logits, groups.repeat_interleave(7)))


def test_group_routing_gradients_match_loop():
    moe = make_moe()
    x = torch.randn(4, 6, C)
    groups = torch.tensor([1, 3, 3, 0])
    assert_same(run(moe, FUSED_IMPLS[-1], x, groups, "group"), run(moe, "loop", x, groups, "group"))


def test_balance_loss_has_gradient_and_follows_routing():
    # the authors' copy of this loss was a constant (= E) with zero gradient; ours must not be
    moe = make_moe()
    x = torch.randn(4, 16, C)
    _, aux = moe(x)
    aux["balance"].backward()
    g = moe.router.weight.grad
    assert g is not None and g.abs().sum() > 0
    # skew the router towards expert 0: the loss sees it, and a gradient step on it rebalances
    with torch.no_grad():
        moe.router.weight[0] += 0.5 * x.reshape(-1, C).mean(0) / x.reshape(-1, C).mean(0).norm()
    moe.zero_grad()
    _, aux2 = moe(x)
    assert aux2["balance"] > aux["balance"] + 1e-3
    assert aux2["expert_counts"][0] > aux["expert_counts"][0]
    aux2["balance"].backward()
    with torch.no_grad():
        moe.router.weight -= 1.0 * moe.router.weight.grad
    _, aux3 = moe(x)
    assert aux3["balance"] < aux2["balance"]


def test_autocast_bf16_close_to_fp32():
    moe = make_moe()
    x = torch.randn(2, 8, C)
    y32, _ = moe(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, aux = moe(x)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("routing", ["learned", "group"])
def test_compiles_once_whatever_the_routing(dtype, routing):
    """torch.compile(fullgraph=True, dynamic=False) traces the layer (forward AND backward) once, then
    reruns that graph for every routing: only the expert offsets change, never a shape.
    fp32 under compile takes the padded-bmm fallback (compile's grouped_mm accepts bf16 only);
    bf16 takes grouped_mm. The "aot_eager" backend traces exactly what inductor would get (dynamo
    graph + AOT autograd on fake tensors) without spending ~20 s on C++ codegen per graph on CPU."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    moe = make_moe().to(dtype)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(moe, backend=counter, fullgraph=True, dynamic=False)
    group_sets = [[0, 0, 0], [1, 2, 3], [3, 3, 1], [2, 0, 2]]  # incl. all tokens to one expert
    seen = set()
    for i, gs in enumerate(group_sets):
        x = torch.randn(3, 8, C, dtype=dtype, generator=torch.Generator().manual_seed(i))
        groups = torch.tensor(gs) if routing == "group" else None
        y, aux = compiled(x.requires_grad_(True), groups, routing)
        (y.float().square().sum() + aux.get("balance", 0)).backward()
        seen.add(tuple(aux["expert_counts"].tolist()))
        if dtype == torch.float32:  # compiled (padded fallback) == eager (grouped_mm when available)
            moe.impl = "auto"
            y_eager, _ = moe(x, groups, routing)
            torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    assert len(seen) >= 3  # the token counts per expert really differed between calls
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"


@pytest.mark.parametrize("autocast", [False, True])
def test_whole_model_compiles_without_graph_breaks(autocast):
    """train.py compiles the whole GPT the plain way (no fullgraph=True), where dynamo silently splits
    the graph at any data-dependent-shape op and the compiled step can end up slower than eager (a
    torch.bincount in the router did exactly that: 5 breaks, 10 graphs for one MoE layer). Every
    pipeline model -- dense, group routing, learned routing -- must be one graph per structure, and a
    fresh model of an already-seen structure (the next stage) must reuse it rather than recompile."""
    from torch._dynamo.utils import counters

    from model import GPT

    torch._dynamo.reset()
    counters.clear()
    x = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    groups = torch.tensor([0, 2, 2, 1])
    plan = [([], "learned"), ([0], "group"), ([0], "learned"), ([0], "group")]  # the last one: a new model
    new_graphs = []
    for layers, routing in plan:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=128, block_size=16, n_layer=2, n_head=2, n_embd=C,
                              moe_layers=layers, n_experts=3 if layers else 0))
        compiled = torch.compile(model, backend="aot_eager", dynamic=False)
        before = counters["stats"]["unique_graphs"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss, aux = compiled(x, y, expert_ids=groups if layers else None, routing=routing)
        loss.backward()
        new_graphs.append(counters["stats"]["unique_graphs"] - before)
        if layers:
            _, loss_eager, _ = model(x, y, expert_ids=groups, routing=routing)
            assert abs(loss.item() - loss_eager.item()) < (3e-2 if autocast else 1e-5)
    assert not counters["graph_break"], f"graph breaks: {list(counters['graph_break'])}"
    assert new_graphs == [1, 1, 1, 0], new_graphs


def test_context_router_is_exact_at_zero_and_causal():
    """keep_out's context router (adapt.py): all zero it changes nothing, bit for bit; a context row makes
    a token's logit depend on the tokens before it and never on those after it."""
    torch.manual_seed(0)
    plain = make_moe()
    ctx = MoE(GPTConfig(n_embd=C, n_layer=2, moe_layers=[0], n_experts=E, router_context=True))
    ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not ctx.router_context.weight.any()
    x = torch.randn(2, 16, C)
    assert torch.equal(ctx(x)[0], plain(x)[0]) and torch.equal(ctx.router_logits(x), plain.router_logits(x))
    with torch.no_grad():
        ctx.router_context.weight[1] = torch.randn(C)
    later, earlier = x.clone(), x.clone()
    later[:, 10:] += 1.0      # change tokens 10..15
    earlier[:, 3] += 1.0      # change token 3
    z, z_later, z_earlier = (ctx.router_logits(t).view(2, 16, E) for t in (x, later, earlier))
    assert torch.equal(z[:, :10], z_later[:, :10])                           # nothing flows back in time
    assert not torch.allclose(z_earlier[:, 4:, 1], z[:, 4:, 1])              # the prefix reaches row 1 ...
    assert torch.equal(z_earlier[:, 4:, [0, 2, 3]], z[:, 4:, [0, 2, 3]])     # ... and only the rows it has
