"""The step commands (profile.py, group.py, upcycle.py) given nothing but a run's files reproduce what the
pipeline did: one set of defaults, read from the run. An explicit flag still overrides."""
import inspect
import json

import pytest
import torch

import group
import profile
import train
import upcycle
from model import load_checkpoint, model_from_checkpoint


def test_the_step_defaults_are_the_pipelines():
    sig = inspect.signature(profile.profile_languages).parameters
    for flag, (key, name) in profile.SETTINGS.items():
        if key in ("block_size", "seed", "last_layers"):   # the model's / the run's, not a profile default
            continue
        assert sig[name].default == train.DEFAULTS[key], (name, sig[name].default, train.DEFAULTS[key])
    assert group.RUN_DEFAULTS == {k: train.DEFAULTS[k] for k in group.RUN_DEFAULTS}


def test_the_default_gives_each_new_language_an_expert_of_its_own():
    """--langs 18: the 8 languages BLOOM's corpus lacks are new after base; each gets an expert, the 10 seen
    ones go in pairs (13 experts). A base that saw all 18 has nothing new: 9 pairs, as the paper's groups."""
    from config import PRESETS, check_settings, parse_args, resolve_base_langs, resolve_groups
    for extra, n_groups, alone in (([], 13, "de it ja ko nl ru th uk".split()), (["--base_langs", "all"], 9, []),
                                   (["--new_experts", "grouped"], 9, [])):
        cfg = parse_args(["--langs", "18"] + extra, train.DEFAULTS, PRESETS)
        langs = check_settings(cfg, train.VARIANTS)
        assert resolve_groups(cfg, langs, resolve_base_langs(cfg, langs)) == (alone, n_groups)
        assert cfg["n_groups"] == 0                       # the setting as given (0 = pairs), as config.json keeps it


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    # a base that never saw uk: under --new_experts own (the default) uk gets an expert of its own
    train.main(["--preset", "tiny", "--langs", "de,nl,ru,uk", "--base_langs", "de,nl,ru", "--n_groups", "2",
                "--vocab_size", "512", "--variants", "cpt", "--stage1_steps", "1", "--stage2_steps", "1", "--seed", "3",
                "--out", str(root / "run"), "--data_cache", str(root / "cache")])
    return root


def test_profile_then_group_then_upcycle_give_the_runs_own(run, capsys):
    rd = run / "run"
    prof = profile.cli(["--ckpt", str(rd / "base.pt"), "--out", str(run / "p.json"), "--device", "cpu"])
    mine = json.load(open(rd / "profile.json"))
    for k in ("langs", "similarity", "ffn_dev", "similarity_repeats", "vector_layers", "data_fingerprint", "grouping"):
        assert prof[k] == mine[k], k
    g = group.main([str(run / "p.json"), "--out", str(run / "g.json")])
    theirs = json.load(open(rd / "groups.json"))
    assert g["groups"] == theirs["groups"] and g["moe_layers"] == theirs["moe_layers"] and g["seed"] == 3
    assert theirs["groups"] == [["de", "nl", "ru"], ["uk"]] and g["alone"] == ["uk"]
    upcycle.main([str(rd / "base.pt"), "--groups", str(run / "g.json"), "--out", str(run / "moe.pt")])
    moe = load_checkpoint(str(run / "moe.pt"))
    cfg = json.load(open(rd / "config.json"))
    expected = upcycle.upcycle(model_from_checkpoint(load_checkpoint(str(rd / "base.pt"))), theirs["moe_layers"],
                               len(theirs["groups"]), top_k=cfg["top_k"], seed=cfg["seed"])
    assert moe["model"].keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in moe["model"].items())
    assert moe["lang_to_expert"] == theirs["lang_to_expert"] and moe["groups"] == theirs["groups"]

    # an explicit flag overrides the run's setting
    other = profile.cli(["--ckpt", str(rd / "base.pt"), "--out", str(run / "p2.json"), "--device", "cpu",
                         "--windows", "8"])
    assert other["config"]["windows"] == 8 and other["similarity"] != mine["similarity"]
    g2 = group.main([str(run / "p.json"), "--out", str(run / "g2.json"), "--groups", "3", "--eps", "0"])
    assert len(g2["groups"]) == 3 and g2["groups"][2] == ["uk"] and g2["moe_layers"] == [0, 1]
    capsys.readouterr()


def test_a_profile_shared_from_another_run_groups_as_this_run(run, tmp_path, capsys):
    """A sweep copies one run's base.pt and profile.json into a run with other grouping settings; train.py
    reuses the profile, and `python group.py RUN/profile.json` must then give THIS run's groups.json."""
    import shutil
    other = tmp_path / "other"
    other.mkdir()
    for f in ("base.pt", "profile.json"):
        shutil.copy(run / "run" / f, other / f)
    train.main(["--preset", "tiny", "--langs", "de,nl,ru,uk", "--base_langs", "de,nl,ru", "--n_groups", "3", "--eps", "0",
                "--vocab_size", "512",
                "--variants", "cpt", "--stage1_steps", "1", "--stage2_steps", "1", "--seed", "3",
                "--out", str(other), "--data_cache", str(run / "cache")])
    g = group.main([str(other / "profile.json"), "--out", str(tmp_path / "g.json")])
    theirs = json.load(open(other / "groups.json"))
    assert len(theirs["groups"]) == 3 and theirs["groups"][2] == ["uk"] and theirs["moe_layers"] == [0, 1]
    assert g["groups"] == theirs["groups"] and g["moe_layers"] == theirs["moe_layers"]
    capsys.readouterr()
