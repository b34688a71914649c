"""Upcycling computes exactly what the dense model did; add_expert copies an expert."""

from dataclasses import asdict

import pytest
import torch

from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint
from upcycle import add_expert, main, upcycle, upcycle_checkpoint

TINY = dict(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=32)


def dense_model(bias=True):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, bias=bias))
    with torch.no_grad():  # non-zero biases, so that a bias not copied would show
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("bias", [True, False])
def test_upcycled_model_computes_the_dense_function(bias):
    dense = dense_model(bias)
    moe = upcycle(dense, [0, 2], n_experts=4, top_k=2, seed=0)
    assert moe.config.moe_layers == [0, 2] and moe.config.n_experts == 4
    idx = torch.randint(0, 32, (4, 16))
    ref, _, _ = dense(idx)
    for groups in ([0, 1, 2, 3], [3, 3, 3, 3], [1, 0, 1, 2]):
        logits, _, _ = moe(idx, expert_ids=torch.tensor(groups), routing="group")
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    logits, _, aux = moe(idx, routing="learned")  # top-2 renormalised weights sum to 1
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    with torch.no_grad():  # whatever the router says, as long as the experts are equal
        for layer in moe.moe_modules():
            layer.router.weight.normal_()
    logits, _, aux = moe(idx, routing="learned")
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert (aux["expert_counts"] > 0).sum() > 4  # tokens really spread over more than 2 experts


def test_only_the_ffn_changes():
    dense = dense_model()
    moe = upcycle(dense, [1], n_experts=3)
    d, m = dense.state_dict(), moe.state_dict()
    ffn = "transformer.h.1.ffn."
    for k, v in d.items():
        if k.startswith(ffn):
            assert k not in m
        else:
            assert torch.equal(m[k], v), k
    mlp, layer = dense.transformer.h[1].ffn, moe.transformer.h[1].ffn
    for e in range(3):
        assert torch.equal(layer.w_fc[e], mlp.c_fc.weight.t()) and torch.equal(layer.b_fc[e], mlp.c_fc.bias)
        assert torch.equal(layer.w_proj[e], mlp.c_proj.weight.t())
        assert torch.equal(layer.b_proj[e], mlp.c_proj.bias)
    # the new router: N(0, 0.02), seeded, and it does not touch the caller's RNG
    r = layer.router.weight
    assert r.shape == (3, 32) and 0.01 < r.std() < 0.03
    state = torch.random.get_rng_state()
    again = upcycle(dense, [1], n_experts=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again.transformer.h[1].ffn.router.weight, r)
    assert not torch.equal(upcycle(dense, [1], 3, seed=1).transformer.h[1].ffn.router.weight, r)
    # the upcycled weights are copies, not views of the dense model
    with torch.no_grad():
        layer.w_fc[0].zero_()
    assert mlp.c_fc.weight.abs().sum() > 0


def test_bad_arguments():
    dense = dense_model()
    with pytest.raises(ValueError):
        upcycle(dense, [3], 2)
    with pytest.raises(ValueError):
        upcycle(dense, [0], 2, top_k=3)
    with pytest.raises(ValueError):
        upcycle(upcycle(dense, [0], 2), [1], 2)


def test_add_expert_copies_src():
    moe = upcycle(dense_model(), [0, 2], n_experts=3)
    with torch.no_grad():  # make the experts differ, as after training
        for layer in moe.moe_modules():
            for p in (layer.w_fc, layer.b_fc, layer.w_proj, layer.b_proj):
                p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 32, (2, 16))
    before = {e: moe(idx, expert_ids=torch.full((2,), e), routing="group")[0] for e in range(3)}
    new = add_expert(moe, 1)
    assert new == 3 and moe.config.n_experts == 4
    for layer in moe.moe_modules():
        assert layer.n_experts == 4 and layer.router.weight.shape == (4, 32)
        assert torch.equal(layer.router.weight[3], layer.router.weight[1])
        for p in (layer.w_fc, layer.b_fc, layer.w_proj, layer.b_proj):
            assert p.shape[0] == 4 and torch.equal(p[3], p[1])
    for e in range(3):  # the old experts are untouched
        assert torch.equal(moe(idx, expert_ids=torch.full((2,), e), routing="group")[0], before[e])
    logits, _, aux = moe(idx, expert_ids=torch.full((2,), 3), routing="group")
    assert torch.equal(logits, before[1])
    assert aux["expert_counts"][:, 3].tolist() == [32, 32]
    _, _, aux = moe(idx, routing="learned")
    assert aux["expert_counts"].shape == (2, 4)
    # a checkpoint of the grown model rebuilds with 4 experts
    again = model_from_checkpoint({"model": moe.state_dict(), "model_args": asdict(moe.config)})
    assert torch.equal(again(idx, expert_ids=torch.full((2,), 3), routing="group")[0], logits)


def test_cli(tmp_path, capsys):
    dense = dense_model()
    dense_path, moe_path = str(tmp_path / "dense.pt"), str(tmp_path / "moe.pt")
    save_checkpoint(dense_path, {"model": dense.state_dict(), "model_args": asdict(dense.config),
                                 "optimizer": {"x": 1}, "step": 50, "vocab": {"v": 1}, "langs": ["de", "fr"]})
    main([dense_path, "--layers", "0,2", "--experts", "2", "--out", moe_path])
    assert "upcycled" in capsys.readouterr().out
    ckpt = load_checkpoint(moe_path)
    assert ckpt["model_args"]["moe_layers"] == [0, 2] and ckpt["model_args"]["n_experts"] == 2
    assert ckpt["langs"] == ["de", "fr"] and ckpt["vocab"] == {"v": 1} and ckpt["optimizer"] is None
    assert ckpt["step"] == 0 and ckpt["upcycled_from"]["step"] == 50
    moe = model_from_checkpoint(ckpt)
    idx = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(moe(idx)[0], dense(idx)[0], atol=1e-5, rtol=0)
    same = upcycle_checkpoint(load_checkpoint(dense_path), [0, 2], 2)
    assert all(torch.equal(same["model"][k], v) for k, v in ckpt["model"].items())


def test_upcycled_adam_state_takes_the_dense_step():
    """upcycle_adam gives every expert its dense FFN's AdamW moments: with every token routed to expert 0,
    the upcycled model's next AdamW step moves expert 0 (and everything shared) exactly as the dense model's
    next step moves the dense model."""
    from model import adam_by_name, load_adam_by_name
    from upcycle import upcycle_adam
    torch.manual_seed(0)
    dense = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))
    opt = dense.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    x = torch.randint(0, 64, (4, 8))
    for _ in range(3):   # some history in the moments
        dense(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    moe = upcycle(dense, [0, 1], 3)
    moe_opt = moe.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    load_adam_by_name(moe, moe_opt, upcycle_adam(adam_by_name(dense, opt), [0, 1], 3))
    dense(x, x)[1].backward()
    opt.step()
    moe(x, x, expert_ids=torch.zeros(4, dtype=torch.long), routing="group")[1].backward()
    moe_opt.step()
    after = moe.state_dict()
    for k, v in dense.state_dict().items():
        if ".ffn." not in k:
            torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6, msg=k)
    for l in (0, 1):
        p = f"transformer.h.{l}.ffn."
        torch.testing.assert_close(after[p + "w_fc"][0], dense.state_dict()[p + "c_fc.weight"].t(), rtol=0, atol=1e-6)
        torch.testing.assert_close(after[p + "w_proj"][0], dense.state_dict()[p + "c_proj.weight"].t(), rtol=0, atol=1e-6)
        torch.testing.assert_close(after[p + "b_fc"][0], dense.state_dict()[p + "c_fc.bias"], rtol=0, atol=1e-6)
