"""eval.py (metrics, forced routing, the CLI) and analysis/report.py (routing analysis, seed summaries, pictures)
on tiny models and a fake corpus."""
import json
import math
import os
import sys
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import adapt
import eval as E
from analysis import plots
from analysis import report as R
import model as M
import upcycle as U

LANGS = ["aa", "bb", "cc"]
V = 64   # vocabulary of the fake corpus / tiny models
T = 16   # block size


class FakeTokenizer:
    vocab_size = V
    eot = 0

    def token_bytes(self):
        return [0] + [1 + i % 3 for i in range(1, V)]   # EOT has 0 bytes, the rest 1..3


class FakeData:
    """The part of data.Dataset that eval.py uses: langs, tokenizer, tokens(), eval_windows()."""

    def __init__(self, n_tokens=200, seed=0):
        self.langs = list(LANGS)
        self.tokenizer = FakeTokenizer()
        rng = np.random.default_rng(seed)
        self._tok = {}
        for i, lang in enumerate(self.langs):   # each language lives mostly in its own slice of the vocabulary
            for split in ("train", "val", "parallel"):
                t = rng.integers(1 + 20 * i, 21 + 20 * i, size=n_tokens)
                t[::25] = 0                        # some document separators
                self._tok[lang, split] = t.astype(np.uint32)

    def tokens(self, lang, split):
        return self._tok[lang, split]

    def eval_windows(self, lang, split, block_size, max_windows):
        t = self._tok[lang, split].astype(np.int64)
        n = min((len(t) - 1) // block_size, max_windows)
        x = np.stack([t[i * block_size:(i + 1) * block_size] for i in range(n)])
        y = np.stack([t[i * block_size + 1:(i + 1) * block_size + 1] for i in range(n)])
        return torch.from_numpy(x), torch.from_numpy(y)


def tiny_dense(seed=0):
    torch.manual_seed(seed)
    return M.GPT(M.GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=32))


def tiny_moe(seed=0, n_experts=3, perturb=True):
    """Upcycled 2-layer MoE whose experts are made different (otherwise every routing agrees)."""
    moe = U.upcycle(tiny_dense(seed), [0, 1], n_experts, top_k=2, seed=seed)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in moe.named_parameters():
                if ".ffn." in name and "router" not in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
    return moe


@pytest.fixture(scope="module")
def data():
    return FakeData()


LANG_TO_EXPERT = {"aa": 0, "bb": 2, "cc": 1}


def test_forced_routing_equals_group_routing(data, tmp_path, monkeypatch):
    moe = tiny_moe()
    grouped = E.evaluate(moe, data, LANGS, routing="group", lang_to_expert=LANG_TO_EXPERT, max_windows=4, batch_size=3)
    for lang in LANGS:
        forced = E.evaluate(moe, data, [lang], force_expert=LANG_TO_EXPERT[lang], max_windows=4, batch_size=3)[lang]
        assert forced == grouped[lang]
    # the command line's --routing expert:E is force_expert=E (one way to force an expert)
    _save(tmp_path / "moe.pt", moe, LANG_TO_EXPERT, "dmoe")
    monkeypatch.setattr(E, "load_dataset", lambda path: data)
    cli = E.main([str(tmp_path / "moe.pt"), "--routing", "expert:2", "--max_windows", "4", "--batch_size", "3",
                  "--device", "cpu"])["moe"]
    assert cli == E.evaluate(moe, data, LANGS, force_expert=2, max_windows=4, batch_size=3)
    with pytest.raises(ValueError, match="unknown routing"):
        E.evaluate(moe, data, ["aa"], routing="expert:1", max_windows=1)
    # the forcing is real: different experts give different losses
    losses = [E.evaluate(moe, data, ["aa"], force_expert=e, max_windows=4)["aa"]["loss"] for e in range(3)]
    assert len(set(losses)) == 3
    # a language outside the map falls back to learned routing
    learned = E.evaluate(moe, data, ["cc"], max_windows=4)["cc"]
    assert E.evaluate(moe, data, ["cc"], routing="group", lang_to_expert={"aa": 0}, max_windows=4)["cc"] == learned
    with pytest.raises(ValueError):
        E.evaluate(moe, data, ["aa"], force_expert=3, max_windows=1)
    assert moe.training   # evaluate restores the training mode


def test_routing_matrix_rows_sum_to_one(data):
    moe = tiny_moe()
    rm = R.routing_matrix(moe, data, LANGS, lang_to_expert=LANG_TO_EXPERT, max_windows=4, batch_size=2)
    assert rm["layers"] == [0, 1]
    assert rm["matrix"].shape == (2, 3, 3)
    np.testing.assert_allclose(rm["matrix"].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(rm["load"].sum(-1), 1.0, atol=1e-6)
    assert rm["load_cv"].shape == (2,) and (rm["load_cv"] >= 0).all()
    for li, lang in enumerate(LANGS):
        np.testing.assert_allclose(rm["own_group_share"][:, li], rm["matrix"][:, li, LANG_TO_EXPERT[lang]])
    for k in ("top1", "prob"):
        np.testing.assert_allclose(rm[k].sum(-1), 1.0, atol=1e-6)
    text = plots.routing_report(rm, LANG_TO_EXPERT)
    assert "layer 0" in text and "load" in text and "own" in text and "token-slots" in text
    # top_k = E: every token uses every expert, so the report shows first choices instead
    two = R.routing_matrix(tiny_moe(n_experts=2), data, LANGS, max_windows=2)
    np.testing.assert_allclose(two["matrix"], 0.5)
    assert two["own_group_share"] is None and "first-choice" in plots.routing_report(two)
    with pytest.raises(ValueError):
        R.routing_matrix(tiny_dense(), data, LANGS)


class UniformModel(nn.Module):
    """Logits all zero: every target costs ln V nats."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_size=T, moe_layers=[], n_experts=0)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, expert_ids=None, routing="learned"):
        assert expert_ids is None   # dense models get no routing arguments
        return torch.zeros(*idx.shape, V) + 0 * self.dummy, None, {}


def test_bits_per_byte_by_hand(data):
    res = E.evaluate(UniformModel(), data, ["bb"], max_windows=5, routing="group", lang_to_expert=LANG_TO_EXPERT,
                     batch_size=2)["bb"]
    tb = FakeTokenizer().token_bytes()
    _, y = data.eval_windows("bb", "val", T, 5)
    n_tok = y.numel()
    n_bytes = sum(tb[int(t)] for t in y.flatten())
    assert n_tok == 5 * T and res["tokens"] == n_tok and res["bytes"] == n_bytes
    assert any(int(t) == 0 for t in y.flatten())   # EOT present, counted with 0 bytes
    assert res["loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert res["ppl"] == pytest.approx(V, rel=1e-5)
    assert res["bpb"] == pytest.approx(n_tok * math.log(V) / math.log(2) / n_bytes, rel=1e-6)
    s = E.summarize({"x": res, "y": dict(res, ppl=2 * res["ppl"])})
    assert s["ppl"] == pytest.approx(1.5 * V, rel=1e-5) and s["n_langs"] == 2


def _save(path, model, lang_to_expert, stage):
    M.save_checkpoint(str(path), {
        "model": model.state_dict(), "model_args": asdict(model.config), "config": {"data_cache": "unused"},
        "vocab": {}, "langs": LANGS, "groups": None if lang_to_expert is None else [["aa"], ["cc"], ["bb"]],
        "lang_to_expert": lang_to_expert, "stage": stage, "step": 0})


def test_dense_checkpoint_and_upcycled_moe_agree(data, tmp_path, monkeypatch, capsys):
    dense = tiny_dense()
    moe = U.upcycle(dense, [0, 1], 3, top_k=2, seed=0)
    d = E.evaluate(dense, data, LANGS, max_windows=3)
    for kw in ({}, {"routing": "group", "lang_to_expert": LANG_TO_EXPERT}, {"force_expert": 2}):
        m = E.evaluate(moe, data, LANGS, max_windows=3, **kw)
        for lang in LANGS:
            assert m[lang]["loss"] == pytest.approx(d[lang]["loss"], abs=1e-5)
            assert m[lang]["bpb"] == pytest.approx(d[lang]["bpb"], abs=1e-5)
    # the same through checkpoints and the command line (run dir: cpt/ckpt.pt and moe.pt)
    os.makedirs(tmp_path / "cpt")
    _save(tmp_path / "cpt" / "ckpt.pt", dense, None, "cpt")
    _save(tmp_path / "moe.pt", moe, LANG_TO_EXPERT, "dmoe")
    monkeypatch.setattr(E, "load_dataset", lambda path: data)
    res = E.main([str(tmp_path), "--routing", "group", "--max_windows", "3", "--device", "cpu"])
    R.main([str(tmp_path), "--routing", "--affinity", "--max_windows", "3", "--device", "cpu"])
    assert set(res) == {"cpt", "moe"}
    for lang in LANGS:
        assert res["moe"][lang]["loss"] == pytest.approx(res["cpt"][lang]["loss"], abs=1e-5)
        assert res["cpt"][lang]["loss"] == pytest.approx(d[lang]["loss"], abs=1e-6)
    out = capsys.readouterr().out
    assert "avg" in out and "Δppl" in out and "+0.0%" in out and "routing of moe" in out and "forced" in out


def test_expert_affinity(data):
    moe = tiny_moe()
    aff = adapt.expert_affinity(moe, data, LANGS, max_windows=2)
    assert aff.shape == (3, 3) and np.isfinite(aff).all()
    assert "best" in plots.affinity_report(aff, LANGS, LANG_TO_EXPERT)


def test_compare_table_fits_terminal():
    langs = [f"l{i}" for i in range(18)]
    variants = ["base", "cpt", "dmoe", "random", "all_layers"]
    res = {v: {l: {"loss": 3.0 + 0.1 * j, "ppl": math.exp(3.0 + 0.1 * j), "bpb": 1.2 + 0.01 * j}
               for l in langs} for j, v in enumerate(variants)}
    table = E.compare_table(res, baseline="cpt", params={v: 10_000_000 + j for j, v in enumerate(variants)})
    assert max(len(line) for line in table.splitlines()) <= 140
    assert "10.00M" in table and "-9.5%" in table   # dmoe vs cpt: exp(-0.1) - 1
    assert "no baseline" in E.compare_table(res, baseline="nope")


# -- a real (tiny) corpus through the prepare step and the command line ------------------------------------------

def test_real_corpus_cli(tmp_path, capsys):
    from corpora.prepare import prepare
    cache = str(tmp_path / "cache")
    ds = prepare(["de", "ru"], cache, vocab_size=512)
    capsys.readouterr()
    torch.manual_seed(0)
    dense = M.GPT(M.GPTConfig(vocab_size=ds.tokenizer.vocab_size, block_size=T, n_layer=1, n_head=2, n_embd=16))
    moe = U.upcycle(dense, [0], 2, top_k=2)
    for name, m, lang_to_expert in (("cpt", dense, None), ("dmoe", moe, {"de": 0, "ru": 1})):
        M.save_checkpoint(str(tmp_path / "run" / f"{name}.pt"), {
            "model": m.state_dict(), "model_args": asdict(m.config), "config": {"data_cache": cache},
            "vocab": ds.tokenizer.state_dict(), "langs": ["de", "ru"], "groups": None,
            "lang_to_expert": lang_to_expert, "stage": name})
    res = E.main([str(tmp_path / "run"), "--split", "parallel", "--max_windows", "4", "--routing", "group",
                  "--device", "cpu"])
    out = capsys.readouterr().out
    assert "cpt" in out and "dmoe" in out and "Δppl" in out
    tb = ds.tokenizer.token_bytes()
    for lang in ("de", "ru"):
        _, y = ds.eval_windows(lang, "parallel", T, 4)
        r = res["cpt"][lang]
        assert r["tokens"] == y.numel() == 4 * T
        assert r["bytes"] == sum(tb[int(t)] for t in y.flatten())
        assert r["bpb"] * math.log(2) * r["bytes"] == pytest.approx(r["loss"] * r["tokens"], rel=1e-9)
        assert res["dmoe"][lang]["loss"] == pytest.approx(r["loss"], abs=1e-5)   # upcycled = dense
    # sampling: the prompt comes back verbatim at the start, followed by new text; group routing by language
    E.main([str(tmp_path / "run" / "dmoe.pt"), "--sample", "Все люди", "--sample_tokens", "5",
            "--sample_lang", "ru", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "--- dmoe" in out and "\nВсе люди" in out
    with pytest.raises(SystemExit, match="--sample_lang xx not among de,ru"):
        E.main([str(tmp_path / "run" / "dmoe.pt"), "--sample", "a", "--sample_lang", "xx", "--device", "cpu"])


def test_seed_summary(tmp_path, capsys):
    """Several results.json (seeds) -> mean ± std of each variant's average ppl and its change vs cpt."""
    paths = []
    for i, (c, d) in enumerate([(10.0, 9.0), (12.0, 11.4)]):
        r = {"variants": {"cpt": {"aa": {"loss": math.log(c), "ppl": c, "bpb": 1.0}},
                          "dmoe": {"aa": {"loss": math.log(d), "ppl": d, "bpb": 0.9}}},
             "forced_group": {"dmoe": {"aa": {"loss": math.log(c), "ppl": c, "bpb": 1.0}}}}
        if i == 1:
            r["forced_group"]["random"] = r["forced_group"]["dmoe"]   # not in every run: no row
        paths.append(str(tmp_path / f"r{i}.json"))
        json.dump(r, open(paths[-1], "w"))
    R.main(paths)
    out = capsys.readouterr().out
    assert "11.00 ±  1.41" in out            # cpt: mean 11, sample std sqrt(2)
    assert "-7.50% ± 3.54" in out            # dmoe: -10% and -5%
    forced = [l for l in out.splitlines() if "forced" in l and "±" in l]
    assert len(forced) == 1 and forced[0].startswith("dmoe forced") and "+0.00% ± 0.00" in forced[0]


def test_seed_summary_scores_a_base_only_on_the_languages_it_saw(tmp_path, capsys):
    """A base that never saw bb has a perplexity in the thousands there: its row averages aa alone, and
    has no change against cpt (which is averaged over both)."""
    paths = []
    for i, base_aa in enumerate((8.0, 10.0)):
        cell = lambda p: {"loss": math.log(p), "ppl": p, "bpb": 1.0}
        r = {"variants": {"base": {"aa": cell(base_aa), "bb": cell(5000.0)}, "cpt": {"aa": cell(12.0), "bb": cell(12.0)}},
             "base_langs": ["aa"], "new_langs": ["bb"]}
        paths.append(str(tmp_path / f"r{i}.json"))
        json.dump(r, open(paths[-1], "w"))
    R.main(paths)
    out = capsys.readouterr().out
    base = [l for l in out.splitlines() if l.startswith("base")]
    assert base == ["base (seen)            9.00 ±  1.41     1.0000 ± 0.0000"], out
    assert "languages it was trained on only" in out


def test_run_dir_does_not_mix_in_subdirectories(tmp_path):
    """A run directory's table holds its own variants; adapt-*/ experiments are read only when named."""
    for f in ["base.pt", "cpt.pt", "dmoe_stage1.pt", "dmoe.pt", "adapt-be/adapt_similar.pt"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    assert [v for v, _ in E.find_checkpoints([str(tmp_path)])] == ["base", "cpt", "dmoe"]
    assert [v for v, _ in E.find_checkpoints([str(tmp_path / "adapt-be")])] == ["adapt_similar"]


def test_seed_summary_prints_group_agreement(tmp_path, capsys):
    """Run directories holding results.json -> the seed summary and the pairwise ARI of their groups."""
    groups = [[["aa", "bb"], ["cc", "dd"]], [["dd", "cc"], ["bb", "aa"]], [["aa", "cc"], ["bb", "dd"]]]
    for i, g in enumerate(groups):
        os.makedirs(tmp_path / f"s{i}")
        c = 10.0 + i
        json.dump({"variants": {"cpt": {"aa": {"loss": math.log(c), "ppl": c, "bpb": 1.0}}}, "groups": g},
                  open(tmp_path / f"s{i}" / "results.json", "w"))
    runs = R.main([str(tmp_path / f"s{i}") for i in range(3)])
    assert len(runs) == 3
    out = capsys.readouterr().out
    assert "11.00 ±  1.00" in out and "adjusted Rand index" in out
    pairs = [l.split() for l in out.splitlines() if l.startswith("  ") and str(tmp_path) in l]
    ari = {(a[-1], b[-1]): float(v) for a, b, v in pairs}      # keyed by the last character of the names
    assert ari == {("0", "1"): 1.0, ("0", "2"): -0.5, ("1", "2"): -0.5}   # same groups relabelled; crossed
    assert "mean 0.000, min -0.500 over 3 pairs" in out


def test_cli_one_line_errors(tmp_path):
    """Bad input ends in SystemExit with a message (no traceback); evaluating nothing is an error."""
    bad_pt = tmp_path / "bad" / "dmoe.pt"
    os.makedirs(bad_pt.parent)
    bad_pt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="non-empty prompt"):
        E.main([str(bad_pt), "--sample", "", "--device", "cpu"])
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        E.main([str(bad_pt), "--sample", "a", "--device", "cpu"])
    with pytest.raises(SystemExit, match="nothing evaluated"):      # its only checkpoint is skipped
        E.main([str(bad_pt.parent), "--device", "cpu"])
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"variants": {"cpt": {"aa": {"loss": 1.0, "ppl": math.e, "bpb": 1.0}}}}))
    not_json, not_results = tmp_path / "a.json", tmp_path / "b.json"
    not_json.write_text("{ not json")
    not_results.write_text("[1, 2]")
    for paths in ([not_json], [not_json, good], [good, not_results]):
        with pytest.raises(SystemExit, match=r"\.json: not a (readable JSON file|train.py results.json)"):
            E.main([str(p) for p in paths])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"variants": {}}))
    with pytest.raises(SystemExit, match="nothing evaluated"):
        E.main([str(empty)])


def test_cli_pictures_without_matplotlib(data, tmp_path, monkeypatch, capsys):
    """analysis/report.py --pictures goes through plots.write_pictures: without matplotlib every picture prints as text."""
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    _save(tmp_path / "dmoe.pt", tiny_moe(), LANG_TO_EXPERT, "dmoe")
    os.makedirs(tmp_path / "logs")
    (tmp_path / "logs" / "dmoe.jsonl").write_text('{"step": 1, "tokens": 64, "loss": 4.0, "lr": 0.001}\n')
    (tmp_path / "groups.json").write_text(json.dumps(
        {"langs": LANGS, "groups": [["aa"], ["cc"], ["bb"]], "similarity": np.eye(3).tolist()}))
    monkeypatch.setattr(E, "load_dataset", lambda path: data)
    R.main([str(tmp_path), "--pictures", str(tmp_path / "pics"), "--max_windows", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "routing of dmoe, layer 0" in out and "language similarity" in out and "training curves" in out
    assert os.path.isdir(tmp_path / "pics") and not list((tmp_path / "pics").iterdir())
