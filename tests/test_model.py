"""GPT: shapes, aux dict, it can learn, optimizer groups, sampling, checkpoints."""

import os
from dataclasses import asdict

import pytest
import torch

from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint

TINY = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw}))


def test_dense_shapes():
    model = tiny()
    idx = torch.randint(0, 32, (3, 16))
    logits, loss, aux = model(idx, idx)
    assert logits.shape == (3, 16, 32) and loss.dim() == 0 and aux == {}
    logits, loss, aux = model(idx[:, :5], expert_ids=torch.tensor([0, 1, 0]))  # expert_ids ignored when dense
    assert logits.shape == (3, 5, 32) and loss is None and aux == {}


def test_moe_shapes_and_aux():
    model = tiny(moe_layers=[0, 1], n_experts=3)
    idx = torch.randint(0, 32, (4, 16))
    groups = torch.tensor([0, 2, 2, 1])
    logits, loss, aux = model(idx, idx, expert_ids=groups, routing="learned")
    assert logits.shape == (4, 16, 32)
    assert set(aux) == {"router_ce", "balance", "z", "expert_counts"}
    assert aux["expert_counts"].shape == (2, 3) and aux["expert_counts"].sum() == 2 * 4 * 16 * 2
    assert not aux["expert_counts"].requires_grad and aux["balance"].requires_grad
    _, _, aux = model(idx, idx, expert_ids=groups, routing="group")
    assert set(aux) == {"router_ce", "z", "expert_counts"}
    assert aux["expert_counts"].tolist() == [[16, 16, 32]] * 2
    _, _, aux = model(idx)  # learned routing without groups: no router CE
    assert set(aux) == {"balance", "z", "expert_counts"}
    with pytest.raises(ValueError, match="needs expert_ids"):
        model(idx, routing="group")
    with pytest.raises(ValueError, match="expert ids"):
        model(idx, expert_ids=torch.tensor([0, 1, 2, 3]), routing="group")


def test_param_count_counts_tied_embedding_once():
    model = tiny()
    C, V, T, L = 32, 32, 16, 2
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert model.num_params() == V * C + T * C + L * per_block + 2 * C
    moe = tiny(moe_layers=[1], n_experts=4)
    ffn = 4 * C * C + 4 * C + 4 * C * C + C
    assert moe.num_params() == model.num_params() + 3 * ffn + 4 * C  # 3 more experts + the router


@pytest.mark.parametrize("kw", [{}, dict(moe_layers=[1], n_experts=2)])
def test_overfits_a_tiny_batch(kw):
    model = tiny(**kw)
    torch.manual_seed(1)
    x = torch.randint(0, 32, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu")
    first = None
    for _ in range(100):
        _, loss, aux = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        (loss + 0.01 * aux.get("balance", 0)).backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.5, (first, loss.item())


def test_optimizer_groups():
    model = tiny(moe_layers=[0], n_experts=2)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}
    moe = model.moe_modules()[0]
    assert id(moe.w_fc) in ids(decay) and id(moe.w_proj) in ids(decay)  # 3-D expert stacks decay
    assert id(moe.router.weight) in ids(no_decay) and id(moe.b_fc) in ids(no_decay)
    assert id(moe.b_proj) in ids(no_decay)  # (E, C): a stack of biases, not a matrix
    assert all(p.dim() >= 2 for p in decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()  # every parameter exactly once


def test_generate():
    model = tiny(moe_layers=[1], n_experts=2)
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 20, top_k=5, expert_ids=torch.tensor([0, 1]),
                         routing="group")
    assert out.shape == (2, 23) and out.max() < 32  # ran past block_size (16): the context is cropped


def make_ckpt(model):
    return {"model": model.state_dict(), "model_args": asdict(model.config), "step": 7, "stage": "base"}


def test_checkpoint_roundtrip(tmp_path):
    model = tiny(moe_layers=[0], n_experts=3)
    path = str(tmp_path / "sub" / "m.pt")
    save_checkpoint(path, make_ckpt(model))
    assert os.listdir(tmp_path / "sub") == ["m.pt"]  # atomic save leaves no temp file
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7
    again = model_from_checkpoint(ckpt, "cpu")
    idx = torch.randint(0, 32, (2, 16))
    g = torch.tensor([2, 0])
    for routing in ("learned", "group"):
        assert torch.equal(model(idx, expert_ids=g, routing=routing)[0], again(idx, expert_ids=g, routing=routing)[0])
    # a torch.compile'd model's state_dict has "_orig_mod." keys: accepted too
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}
    assert torch.equal(model_from_checkpoint(ckpt)(idx)[0], model(idx)[0])


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, {"model": {}, "model_args": {}, "step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"model": {}, "model_args": {}, "bad": lambda: 0})  # unpicklable
    assert os.listdir(tmp_path) == ["m.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_missing_or_corrupt_checkpoint_one_line_error(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(RuntimeError) as e:
        load_checkpoint(missing)
    assert missing in str(e.value) and "\n" not in str(e.value)

    model = tiny()
    path = str(tmp_path / "cut.pt")
    save_checkpoint(path, make_ckpt(model))
    with open(path, "r+b") as f:  # a save cut short
        f.truncate(os.path.getsize(path) // 2)
    for bad in (path, str(tmp_path / "junk.pt")):
        if bad.endswith("junk.pt"):
            with open(bad, "wb") as f:
                f.write(b"not a checkpoint at all")
        with pytest.raises(RuntimeError) as e:
            load_checkpoint(bad)
        msg = str(e.value)
        assert msg.startswith(f"{bad}: not a readable checkpoint (") and "\n" not in msg, msg
