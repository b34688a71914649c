"""New-language adaptation (docs/METHOD.md §7): a new expert, only MoE weights move, old languages intact."""
import json
import re

import pytest
import torch

import adapt as A
import data as D
import train
from ablations import adapt_methods
from model import load_checkpoint, model_from_checkpoint, save_checkpoint

OLD = "de,nl,ru,uk"
BASE = ["--preset", "tiny", "--vocab_size", "512", "--n_groups", "2", "--variants", "cpt,dmoe",
        "--base_steps", "20", "--stage1_steps", "4", "--stage2_steps", "8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(BASE + ["--langs", OLD, "--out", str(out), "--data_cache", str(out / "cache")])
    return out


def adapt(run, *extra):
    """Every method: the paper's and keep_out (adapt.py) and the three of ablations/adapt_methods.py."""
    return adapt_methods.main(["--preset", "tiny", "--adapt", "ja", "--from", str(run / "dmoe.pt"),
                       "--adapt_steps", "6", "--out", str(run / "adapt"),
                       "--data_cache", str(run / "cache-ja"), *extra])


def test_adaptation_trains_only_moe_and_leaves_old_languages_alone(run):
    rep = adapt(run)
    assert json.load(open(run / "adapt" / "adapt.json"))["new_langs"] == ["ja"]
    src = load_checkpoint(str(run / "dmoe.pt"))
    new = load_checkpoint(str(run / "adapt" / "adapt_similar.pt"))
    E_old = src["model_args"]["n_experts"]
    assert new["model_args"]["n_experts"] == E_old + 1
    assert new["lang_to_expert"]["ja"] == E_old
    moe = tuple(f"transformer.h.{l}.ffn." for l in src["model_args"]["moe_layers"])
    for k, v in src["model"].items():
        w = new["model"][k]
        if k.startswith(moe):
            # the old experts (checked below; the paper's `similar` trains the routers): Adam moves nothing that gets no gradient, nothing decays
            if k.endswith(("w_fc", "w_proj", "b_fc", "b_proj")):
                assert torch.equal(w[:E_old], v), k
        else:
            assert torch.equal(w, v), k       # attention, embeddings, norms, dense FFNs frozen
    # the new expert was trained (it moved away from the copy)
    e = rep["copied_from"]
    k = f"transformer.h.{src['model_args']['moe_layers'][0]}.ffn.w_fc"
    assert not torch.equal(new["model"][k][E_old], src["model"][k][e])
    # old languages routed to their own group's expert: the very same numbers before and after
    m = rep["methods"]
    assert m["similar"]["old_group"] == m["before"]["old_group"]
    assert m["dissimilar"]["old_group"] == m["before"]["old_group"]
    # and the new language gained (it was never trained on before)
    avg = lambda r: sum(v["loss"] for v in r.values()) / len(r)
    assert avg(m["similar"]["new"]) < avg(m["before"]["new"])
    assert "cpt_finetune" in m and avg(m["cpt_finetune"]["new"]) < avg(m["cpt_before"]["new"])


def test_adaptation_old_logits_under_group_routing_are_unchanged(run):
    adapt(run)   # done already: every stage is skipped, same outputs
    before = model_from_checkpoint(load_checkpoint(str(run / "dmoe.pt")))
    after = model_from_checkpoint(load_checkpoint(str(run / "adapt" / "adapt_similar.pt")))
    ds = D.Dataset.load(str(run / "cache"))
    l2e = load_checkpoint(str(run / "dmoe.pt"))["lang_to_expert"]
    for lang in OLD.split(","):
        x, y = ds.eval_windows(lang, "val", 64, 2)
        g = torch.full((x.size(0),), l2e[lang])
        with torch.no_grad():
            a, _, _ = before(x, expert_ids=g, routing="group")
            b, _, _ = after(x, expert_ids=g, routing="group")
        assert torch.equal(a, b), lang


def test_adaptation_rejects_bad_languages(run):
    with pytest.raises(SystemExit, match="de already trained"):
        A.main(["--preset", "tiny", "--adapt", "de", "--from", str(run / "dmoe.pt")])
    with pytest.raises(SystemExit, match="xx"):
        A.main(["--preset", "tiny", "--adapt", "xx", "--from", str(run / "dmoe.pt")])
    with pytest.raises(SystemExit, match="dense checkpoint"):
        A.main(["--preset", "tiny", "--adapt", "ja", "--from", str(run / "cpt.pt")])


@pytest.mark.parametrize("flag,value,says", [("--adapt_old_weight", "0", "--adapt_old_weight must be a positive number"),
                                            ("--adapt_old_weight", "-2", "--adapt_old_weight must be a positive number"),
                                            ("--adapt_margin", "-1", "--adapt_margin must be 0 or more"),
                                            ("--adapt_replay", "1", "--adapt_replay must be in [0, 1)")])
def test_adaptation_refuses_bad_settings_in_one_line(run, tmp_path, flag, value, says):
    with pytest.raises(SystemExit, match=re.escape(says)) as e:
        A.main(["--preset", "tiny", "--adapt", "ja", "--from", str(run / "dmoe.pt"), flag, value, "--out", str(tmp_path / "a")])
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()


def saved_copy(src, dst, **changes):
    """A copy of checkpoint `src` at `dst` with `changes` to its top-level entries."""
    ckpt = load_checkpoint(str(src))
    ckpt.update(changes)
    save_checkpoint(str(dst), ckpt)
    return dst


def assert_refused(source, out, match):
    """adapt.py --from `source` ends in one line matching `match`, and nothing is written to `out`."""
    with pytest.raises(SystemExit, match=match) as e:
        A.main(["--preset", "tiny", "--adapt", "ja", "--from", str(source), "--out", str(out)])
    assert "\n" not in str(e.value) and not out.exists()


def test_adaptation_needs_a_finished_trained_moe(run, tmp_path):
    """--from an upcycle.py output (never trained) or an unfinished stage: one line, nothing prepared."""
    import upcycle
    upcycle.main([str(run / "base.pt"), "--layers", "0", "--experts", "2", "--out", str(tmp_path / "moe.pt")])
    assert_refused(tmp_path / "moe.pt", tmp_path / "a", "has no .*upcycle.py output is not trained")
    unfinished = saved_copy(run / "dmoe.pt", tmp_path / "dmoe.pt", done=False, step=3)
    assert_refused(unfinished, tmp_path / "b", r"is an unfinished stage \(step 3\)")


def test_new_expert_only_keeps_every_old_weight(run):
    """new_only / new_only_replay / keep_out: the gradient mask (and keep_out's fitted new row and context
    row) leave the old experts and router rows bit-identical."""
    adapt(run)
    src = load_checkpoint(str(run / "dmoe.pt"))
    E_old = src["model_args"]["n_experts"]
    for method in ("new_only", "new_only_replay", "keep_out"):
        new = load_checkpoint(str(run / "adapt" / f"adapt_{method}.pt"))
        moved = 0
        for k, v in src["model"].items():
            w = new["model"][k]
            if k.endswith(("w_fc", "w_proj", "b_fc", "b_proj", "router.weight")):
                assert torch.equal(w[:E_old], v), (method, k)
                moved += not torch.equal(w[E_old], src["model"][k][new["meta"]["copied"]])
            else:
                assert torch.equal(w, v), (method, k)
        assert moved > 0, method          # the new expert and its router row did train
        context = [w for k, w in new["model"].items() if k.endswith("router_context.weight")]
        assert len(context) == (len(src["model_args"]["moe_layers"]) if method == "keep_out" else 0), method
        for w in context:   # keep_out's context rows: zero for every old expert (their logits stay exact)
            assert not w[:E_old].any() and w[E_old].any()


def test_a_keep_out_checkpoint_of_an_earlier_keep_out_is_refused(run, tmp_path):
    """An adapt_keep_out.pt made before keep_out's router saw the prefix is not taken as done (it would be
    scored as today's method): one line that says to delete it, before any training."""
    adapt(run)
    old = load_checkpoint(str(run / "adapt" / "adapt_keep_out.pt"))
    old["model"] = {k: v for k, v in old["model"].items() if "router_context" not in k}
    old["model_args"] = {k: v for k, v in old["model_args"].items() if k != "router_context"}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text((run / "adapt" / "config.json").read_text())
    save_checkpoint(str(tmp_path / "a" / "adapt_keep_out.pt"), old)
    with pytest.raises(SystemExit, match="made by an earlier keep_out") as e:
        adapt_methods.main(["--preset", "tiny", "--adapt", "ja", "--from", str(run / "dmoe.pt"), "--adapt_steps", "6",
                            "--out", str(tmp_path / "a"), "--data_cache", str(run / "cache-ja"),
                            "--adapt_methods", "keep_out"])
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MoE trained long enough that its experts differ (the `run` fixture's barely do)."""
    out = tmp_path_factory.mktemp("trained")
    train.main(["--preset", "tiny", "--langs", "ar,de,ru,uk,hi,ja", "--n_groups", "3", "--variants", "dmoe",
                "--base_steps", "120", "--stage2_steps", "40", "--out", str(out), "--data_cache", str(out / "cache")])
    return out


def test_learned_routing_forgetting_bound(trained):
    """Belarusian added to a model that knows ru/uk. Run as trained (learned router), the old languages
    move by at most 0.5% with keep_out, while be gains. The paper's method ("similar": the new expert and
    its router row copied, all MoE weights train) breaks that bound on the same batches: old tokens
    follow the copied router row to the new expert."""
    rep = A.main(["--preset", "tiny", "--adapt", "be", "--from", str(trained / "dmoe.pt"),
                      "--adapt_steps", "60", "--adapt_lr", "1e-3", "--adapt_methods", "similar,keep_out",
                      # this small model's new row cannot keep ru/uk out and be in at once at the default 4
                      # (be gains 1%): the trade-off docs/EXPERIMENTS.md §3 (7) measures on the default model
                      "--adapt_old_weight", "1",
                      "--data_cache", str(trained / "cache-be"), "--out", str(trained / "adapt")])
    avg = lambda r: sum(v["ppl"] for v in r.values()) / len(r)   # noqa: E731
    m = rep["methods"]
    change = lambda name: avg(m[name]["old"]) / avg(m["before"]["old"]) - 1   # noqa: E731
    assert abs(change("keep_out")) <= 0.005, change("keep_out")
    assert avg(m["keep_out"]["new"]) < 0.95 * avg(m["before"]["new"])
    assert change("similar") > 0.005, change("similar")   # the bound is not met by today's method
    # and under group routing the old languages stay exactly where they were, with either method
    assert avg(m["keep_out"]["old_group"]) == avg(m["before"]["old_group"]) == avg(m["similar"]["old_group"])


def test_another_setting_gets_its_own_folder_or_is_refused(run):
    """--adapt from another checkpoint gets a folder of its own; other settings in the same folder are refused."""
    common = ["--preset", "tiny", "--adapt", "ja", "--data_cache", str(run / "cache-ja")]
    A.main(common + ["--adapt_steps", "2", "--from", str(run / "dmoe.pt")])
    A.main(common + ["--adapt_steps", "2", "--from", str(run / "dmoe_stage1.pt")])
    assert (run / "adapt-ja-from-dmoe" / "adapt.json").exists()
    assert (run / "adapt-ja-from-dmoe_stage1" / "adapt.json").exists()
    with pytest.raises(SystemExit, match="holds a run with adapt_steps=2"):
        A.main(common + ["--adapt_steps", "3", "--from", str(run / "dmoe.pt")])


def test_train_py_points_to_adapt_py():
    """Adaptation is its own command: train.py names it in one line instead of adapting."""
    with pytest.raises(SystemExit, match=r"python adapt.py --adapt be,sr --from out/dmoe.pt") as e:
        train.main(["--adapt", "be", "--from", "out/dmoe.pt"])
    assert "\n" not in str(e.value)


def test_the_source_models_tokens_are_found_or_refused_in_one_line(run, tmp_path, monkeypatch):
    """The old languages are scored on the cache the source model was trained on, found as eval.py finds it
    (relative to where training ran, or beside the checkpoint), and a cache of other tokens or an
    unfinished cpt baseline is refused in one line before any work."""
    config = load_checkpoint(str(run / "dmoe.pt"))["config"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    monkeypatch.chdir(moved)   # training ran elsewhere: the checkpoint's relative data_cache is not here
    elsewhere = saved_copy(run / "dmoe.pt", tmp_path / "dmoe.pt", config=dict(config, data_cache="nowhere-cache"))
    assert_refused(elsewhere, tmp_path / "a", "dmoe.pt's data cache: no meta.json in nowhere-cache")
    stale = saved_copy(run / "dmoe.pt", tmp_path / "dmoe.pt", data_fingerprint="0" * 16)
    assert_refused(stale, tmp_path / "b", "was made from other tokens")
    rundir = tmp_path / "run"
    rundir.mkdir()
    saved_copy(run / "dmoe.pt", rundir / "dmoe.pt")
    saved_copy(run / "cpt.pt", rundir / "cpt.pt", done=False, step=3)
    assert_refused(rundir / "dmoe.pt", tmp_path / "c", r"cpt.pt is an unfinished stage \(the dense baseline\)")


def test_the_new_row_is_fitted_against_the_old_rows_as_they_are():
    """A model adapted before has non-zero context rows for its old experts: the new row's margins are
    fitted against the old logits those rows give (router_logits), not against their token part alone."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    C = 16
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=C, moe_layers=[0], n_experts=3,
                          top_k=1, router_context=True))
    moe = model.moe_modules()[0]
    e1 = torch.zeros(C)
    e1[0] = 1.0
    with torch.no_grad():
        moe.router.weight[:2] = 0.1 * torch.randn(2, C)
        moe.router_context.weight[:2] = -5.0 * e1     # old text (prefix along +e1) pushes the old logits down
        moe.router.weight[2], moe.router_context.weight[2] = 0.0, 0.0
    x_old = torch.randn(32, 8, C) * 0.3 + 2.0 * e1    # old languages' router inputs
    x_new = torch.randn(32, 8, C) * 0.3 - 2.0 * e1    # new ones'
    lang = torch.arange(32).repeat_interleave(8) % 2
    A.fit_new_router_rows(model, [(x_new, x_old, lang)], top_k=1, margin=1.0, old_weight=4.0, steps=500)
    with torch.no_grad():
        old_top = moe.router_logits(x_old).argmax(-1)
        new_top = moe.router_logits(x_new).argmax(-1)
    assert (old_top == 2).float().mean() < 0.02       # old tokens keep an old expert first
    assert (new_top == 2).float().mean() > 0.98       # new tokens choose the new expert
