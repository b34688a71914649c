"""profile.py: the stdlib-`profile` shim, and the per-language deviation measurements on a tiny GPT."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import profile as P
from model import GPT, GPTConfig, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=16, dropout=0.0)
QUICK = dict(method="adam", steps=3, lr=1e-3, batch_size=4, block_size=16, progress=False)


class FakeData:
    """The one method profile_languages needs from data.Dataset, over in-memory token streams."""

    def __init__(self, streams):
        self.streams = {l: torch.as_tensor(np.asarray(s), dtype=torch.long) for l, s in streams.items()}
        self.langs = list(streams)

    def get_batch(self, split, lang, batch_size, block_size, generator, device):
        s = self.streams[lang]
        ix = torch.randint(len(s) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([s[i:i + block_size] for i in ix])  # (B, T)
        y = torch.stack([s[i + 1:i + 1 + block_size] for i in ix])  # (B, T)
        return x.to(device), y.to(device)

    def tokens(self, lang, split):
        return self.streams[lang].numpy()

    def spread_windows(self, lang, split, block_size, n):
        s = self.streams[lang]
        starts = torch.linspace(0, len(s) - block_size - 1, n).long()
        x = torch.stack([s[i:i + block_size] for i in starts])  # (n, T)
        return x, torch.stack([s[i + 1:i + 1 + block_size] for i in starts])


def stream(seed, n=2000, lo=0, hi=64):
    return np.random.default_rng(seed).integers(lo, hi, size=n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**CFG))


@pytest.fixture(scope="module")
def data():
    # "a" and "b" read the same token stream; "c" another part of the vocabulary
    return FakeData({"a": stream(1), "b": stream(1), "c": stream(2, lo=32)})


def test_stdlib_profile_still_works_when_shadowed():
    code = ("import profile, cProfile, torch\n"
            "cProfile.run('1+1')\n"
            "cProfile.runctx('x+1', {}, {'x': 1})\n"
            "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])\n"
            "p = profile.Profile(); p.runcall(sum, [1, 2])\n"
            "assert profile.profile_languages and profile._Utils\n"
            "import os; assert os.path.dirname(os.path.abspath(profile.__file__)) == os.getcwd()\n"
            "print('ok')\n")
    # and the order train.py hits it in: torch builds an optimizer (importing cProfile) first
    code2 = ("import torch\n"
             "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])\n"
             "import sys, profile\n"
             "assert profile.__file__ == sys.modules['cProfile']._pyprofile.__file__\n"
             "assert hasattr(profile, 'profile_languages')\n"
             "print('ok')\n")
    for c in (code, code2):
        r = subprocess.run([sys.executable, "-c", c], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_layer_weights_are_ffn_and_attention_matrices_only(model):
    layers = P.layer_weights(model)
    assert len(layers) == CFG["n_layer"]
    for l, (ffn, attn) in enumerate(layers):
        assert ffn == [f"transformer.h.{l}.ffn.c_fc.weight", f"transformer.h.{l}.ffn.c_proj.weight"]
        assert attn == [f"transformer.h.{l}.attn.c_attn.weight", f"transformer.h.{l}.attn.c_proj.weight"]
    assert P.default_last_layers(4) == 1 and P.default_last_layers(12) == 2 and P.default_last_layers(24) == 3


def test_zero_steps_means_zero_deviation(model, data):
    prof = P.profile_languages(model, data, ["a", "c"], **{**QUICK, "steps": 0}, repeats=1)
    for l in ["a", "c"]:
        assert prof["ffn_dev"][l] == [0.0] * 4 and prof["attn_dev"][l] == [0.0] * 4
    assert not prof["vectors"].any()


def test_deviations_shapes_values_and_identical_data(model, data):
    rng_before = torch.get_rng_state()
    w_before = model.transformer.h[0].ffn.c_fc.weight.clone()
    prof = P.profile_languages(model, data, ["a", "b", "c"], **QUICK, repeats=2, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert torch.equal(model.transformer.h[0].ffn.c_fc.weight, w_before)  # the model itself unchanged
    for key in ("ffn_dev", "attn_dev"):
        for l in "abc":
            d = prof[key][l]
            assert len(d) == 4 and all(v > 0 and math.isfinite(v) for v in d)
    assert prof["vector_layers"] == [3] and prof["n_layer"] == 4
    assert prof["vectors"].shape == (3, 2 * 16 * 64)
    S = np.array(prof["similarity"])
    assert abs(S[0, 1] - 1.0) < 1e-6  # same token stream -> same deviation
    assert S[0, 2] < 0.99
    assert len(prof["similarity_repeats"]) == 2 and isinstance(prof["repeat_corr"], float)
    rep = np.array(prof["ffn_dev_repeats"]["c"])  # (R, L); the reported deviation is the mean
    assert rep.shape == (2, 4) and np.allclose(rep.mean(0), prof["ffn_dev"]["c"])
    json.dumps({k: v for k, v in prof.items() if k != "vectors"})
    # more vector layers
    prof2 = P.profile_languages(model, data, ["a", "c"], **QUICK, repeats=1, last_layers=2)
    assert prof2["vector_layers"] == [2, 3] and prof2["vectors"].shape == (2, 2 * 2 * 16 * 64)


def test_every_gradient_repeat_reads_its_own_windows(model, data):
    """6 windows in 4 repeats: every repeat gets a part (torch.chunk would make 3 parts and the 4th repeat
    would fail after the base had trained)."""
    prof = P.profile_languages(model, data, ["a", "c"], method="gradient", lr=1e-3, batch_size=4, block_size=16,
                               windows=6, repeats=4, progress=False)
    assert len(prof["similarity_repeats"]) == 4
    for l in ("a", "c"):
        rep = np.array(prof["ffn_dev_repeats"][l])   # (repeats, layers)
        assert rep.shape == (4, 4) and (rep > 0).all()
        assert len({tuple(r) for r in rep.round(12)}) == 4   # four different parts of the text


def test_only_ffn_weight_matrices_are_counted(model, data):
    # the per-layer number is exactly the norm of the two FFN weight deltas: no biases, no embeddings
    prof = P.profile_languages(model, data, ["c"], **QUICK, repeats=1, seed=5)
    every = {n for n, _ in model.named_parameters()}
    deltas, _ = P.finetune_deltas(model, data, "c", every, 3, 1e-3, 4, 16, 5, "cpu")
    for l in range(4):
        h = f"transformer.h.{l}.ffn."
        want = math.sqrt(sum(float(deltas[h + w].pow(2).sum()) for w in ("c_fc.weight", "c_proj.weight")))
        with_bias = math.sqrt(want ** 2 + float(deltas[h + "c_fc.bias"].pow(2).sum()))
        assert prof["ffn_dev"]["c"][l] == pytest.approx(want, rel=1e-6)
        assert with_bias > want * (1 + 1e-6)  # biases did move; they are left out


def test_a_layer_without_gradient_has_zero_deviation(data):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG))
    for p in m.transformer.h[1].ffn.parameters():
        p.requires_grad_(False)
    prof = P.profile_languages(m, data, ["a", "c"], **QUICK, repeats=1)
    for l in ["a", "c"]:
        assert prof["ffn_dev"][l][1] == 0.0
        assert prof["ffn_dev"][l][0] > 0 and prof["ffn_dev"][l][2] > 0 and prof["attn_dev"][l][1] > 0


def test_cli(tmp_path, model, data, monkeypatch, capsys):
    ckpt = tmp_path / "base.pt"
    save_checkpoint(str(ckpt), {"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                                "langs": ["a", "c"]})
    fake = types.ModuleType("data")
    fake.Dataset = types.SimpleNamespace(load=lambda d: data)
    monkeypatch.setitem(sys.modules, "data", fake)
    out = tmp_path / "profile.json"
    P.cli(["--ckpt", str(ckpt), "--data_cache", "unused", "--out", str(out), "--method", "adam", "--steps", "2",
           "--batch_size", "2", "--repeats", "1", "--device", "cpu", "--vectors", str(tmp_path / "v.npy")])
    prof = json.loads(out.read_text())
    assert prof["langs"] == ["a", "c"] and len(prof["ffn_dev"]["a"]) == 4 and "vectors" not in prof
    assert np.load(tmp_path / "v.npy").shape == (2, 2 * 16 * 64)
    assert "nearest neighbour: a->c  c->a" in capsys.readouterr().out
    from analysis import console                  # the heatmap and bars of that file, outside the method
    console.main([str(out)])
    assert "similarity heatmap" in capsys.readouterr().out
    r = subprocess.run([sys.executable, "profile.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--last_layers" in r.stdout


def test_the_same_base_gives_the_same_groups_at_one_and_two_threads(tmp_path):
    """Thread counts change floating-point summation order; the default profile (gradient on fixed spread
    windows) and the groups made from it must not notice (the groups are a measurement, not noise)."""
    import data as D
    import group as G
    import train
    from model import load_checkpoint, model_from_checkpoint
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    train.main(["--preset", "tiny", "--langs", "ar,de,hi,bn,nl,ru,uk,ur", "--n_groups", "4", "--variants", "cpt",
                "--stage1_steps", "0", "--stage2_steps", "1", "--out", str(out), "--data_cache", cache])
    base = model_from_checkpoint(load_checkpoint(str(out / "base.pt")))
    ds = D.Dataset.load(cache)
    threads = torch.get_num_threads()
    sims, groups = [], []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            prof = P.profile_languages(base, ds, ds.langs, method="gradient", windows=32, repeats=2, lr=1e-3,
                                       block_size=64, center=True, progress=False)
            sims.append(np.asarray(prof["similarity"]))
            groups.append(G.make_groups(prof, 4)["groups"])
    finally:
        torch.set_num_threads(threads)
    assert np.abs(sims[0] - sims[1]).max() < 1e-4
    assert groups[0] == groups[1]
