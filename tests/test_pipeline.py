"""The whole pipeline at toy size: every stage runs, writes its files, and resumes after a kill."""
import json
import os

import pytest
import torch

import train
from model import load_checkpoint

SMALL = ["--preset", "tiny", "--langs", "de,nl,ru,uk,ja,zh", "--n_groups", "3", "--vocab_size", "512"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache") / "small")


def run(out, cache, *extra):
    return train.main(SMALL + ["--out", str(out), "--data_cache", cache, *extra])


def test_tiny_pipeline_writes_every_variant_and_language(tmp_path, cache):
    res = run(tmp_path, cache)
    on_disk = json.load(open(tmp_path / "results.json"))
    assert on_disk["langs"] == res["langs"] == ["de", "nl", "ru", "uk", "ja", "zh"]
    assert set(on_disk["variants"]) == {"base", "cpt", "dmoe", "random", "all_layers"}
    for variant, per_lang in on_disk["variants"].items():
        assert set(per_lang) == set(on_disk["langs"]), variant
        for r in per_lang.values():
            assert r["loss"] > 0 and r["bpb"] > 0 and abs(r["ppl"] - torch.tensor(r["loss"]).exp().item()) < 1e-3 * r["ppl"]
    # balanced groups cover every language once; MoE variants have more parameters than dense ones
    flat = sorted(l for g in on_disk["groups"] for l in g)
    assert flat == sorted(on_disk["langs"]) and [len(g) for g in on_disk["groups"]] == [2, 2, 2]
    p = on_disk["params"]
    assert p["cpt"] == p["base"] < p["dmoe"] == p["random"] <= p["all_layers"]
    # the MoE variants are also evaluated with every language forced to its group's expert: for
    # dmoe and random those are different experts, so the numbers differ from each other and from learned
    assert set(on_disk["forced_group"]) == {"dmoe", "random", "all_layers"}
    for v in on_disk["forced_group"]:
        assert set(on_disk["forced_group"][v]) == set(on_disk["langs"])
    loss = lambda table, v: [table[v][l]["loss"] for l in on_disk["langs"]]
    assert loss(on_disk["forced_group"], "dmoe") != loss(on_disk["variants"], "dmoe")
    assert loss(on_disk["forced_group"], "dmoe") != loss(on_disk["forced_group"], "random")
    # training improved on the untrained-from-base continuation: base beats a random init by far
    assert all(r["loss"] < 6.0 for r in on_disk["variants"]["base"].values())
    for f in ["profile.json", "groups.json", "base.pt", "cpt.pt", "dmoe_stage1.pt", "dmoe.pt"]:
        assert (tmp_path / f).exists(), f

    # a second run finds every stage done and redoes none of them
    stamps = {f: os.path.getmtime(tmp_path / f) for f in os.listdir(tmp_path) if f.endswith(".pt")}
    again = run(tmp_path, cache)
    assert {f: os.path.getmtime(tmp_path / f) for f in stamps} == stamps
    assert again["variants"] == res["variants"]


@pytest.mark.parametrize("dropout,stage", [("0.0", "base"), ("0.1", "base"), ("0.1", "cpt")])
def test_killed_stage_resumes_to_the_same_weights(tmp_path, cache, monkeypatch, dropout, stage):
    """Killed after a checkpoint and run again, every weight ends bit for bit as in an uninterrupted run,
    with dropout too (its generator state is in the checkpoint), and whichever stage was cut; so do the
    profile and the MoE after it (the profile's dropout draws are seeded, not the process's: a resumed
    stage builds one more model than an uninterrupted one, which moved the global generator)."""
    args = ["--variants", "cpt,dmoe", "--base_steps", "20", "--ckpt_interval", "5", "--eval_interval", "100",
            "--dropout", dropout]
    straight = tmp_path / "straight"
    run(straight, cache, *args)

    killed = tmp_path / "killed"
    real_lr_at = train.lr_at

    def dying_lr_at(step, steps, peak, cfg):
        if step == 12 and (steps == 20) == (stage == "base"):   # mid-stage, after the checkpoint of step 10
            raise KeyboardInterrupt
        return real_lr_at(step, steps, peak, cfg)
    monkeypatch.setattr(train, "lr_at", dying_lr_at)
    with pytest.raises(KeyboardInterrupt):
        run(killed, cache, *args)
    partial = load_checkpoint(str(killed / f"{stage}.pt"))
    assert partial["step"] == 10 and not partial["done"]
    monkeypatch.setattr(train, "lr_at", real_lr_at)
    run(killed, cache, *args)
    assert json.load(open(straight / "profile.json"))["similarity"] == json.load(open(killed / "profile.json"))["similarity"]
    for name in ["base.pt", "cpt.pt", "dmoe.pt"]:
        a = load_checkpoint(str(straight / name))["model"]
        b = load_checkpoint(str(killed / name))["model"]
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_bad_settings_are_one_line_errors(tmp_path, cache):
    with pytest.raises(SystemExit, match="unknown setting --nope"):
        train.main(["--nope", "1"])
    with pytest.raises(SystemExit, match="--base_steps expects int, got 'ten'"):
        train.main(["--base_steps", "ten"])
    with pytest.raises(SystemExit, match="xx"):
        train.main(SMALL + ["--langs", "de,xx", "--out", str(tmp_path / "a"), "--data_cache", cache + "x"])
    # a block longer than a language's held-out text is caught before any training
    run(tmp_path / "b", cache, "--variants", "cpt", "--base_steps", "2", "--stage1_steps", "1", "--stage2_steps", "1")
    with pytest.raises(SystemExit, match="block"):
        run(tmp_path / "c", cache, "--block_size", "100000")
    # the same run directory with other settings is refused, and nothing is deleted
    with pytest.raises(SystemExit, match="holds a run with"):
        run(tmp_path / "b", cache, "--n_embd", "32")
    assert (tmp_path / "b" / "base.pt").exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, cache):
    out = tmp_path / "run"
    out.mkdir()
    (out / "base.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((SystemExit, RuntimeError, ValueError), match="base.pt"):
        run(out, cache)
    assert (out / "base.pt").read_bytes() == b"not a checkpoint"


def test_seeds_share_one_dataset():
    """--seed changes training, not the held-out documents: runs of several seeds are compared on one test set
    (and never rebuild each other's token files)."""
    args = lambda *a: train.parse_args(list(a), train.DEFAULTS, train.PRESETS)
    caches = {train.default_data_cache(args("--seed", str(s))) for s in (0, 1, 2)}
    assert len(caches) == 1
    assert train.default_data_cache(args("--data_seed", "1")) not in caches


def test_128_languages_smoke(tmp_path, capsys):
    """--langs 128: every language with bundled text, 16 groups by the paper's seed-pair growth rule."""
    res = train.main(["--preset", "tiny", "--langs", "128", "--variants", "dmoe", "--base_steps", "10",
                      "--stage1_steps", "2", "--stage2_steps", "2", "--vocab_size", "512",
                      "--out", str(tmp_path / "run"), "--data_cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "left out" in out                          # the languages without bundled text are named
    assert len(res["langs"]) > 100 and len(res["groups"]) == 16
    groups = json.load(open(tmp_path / "run" / "groups.json"))
    assert groups["method"] == "seed" and sorted(l for g in groups["groups"] for l in g) == sorted(res["langs"])
    assert set(res["variants"]) == {"base", "dmoe"} and set(res["variants"]["dmoe"]) == set(res["langs"])


def test_compiled_bf16_training_matches_eager(tmp_path, cache):
    """The GPU path's training loop on the CPU: torch.compile (inductor) + bf16 autocast through base,
    stage 1 (group routing) and stage 2 (learned routing). It must train what eager bf16 trains (same
    batches, same first losses), and its checkpoints must load into a plain eager model."""
    args = ["--variants", "dmoe", "--base_steps", "12", "--stage1_steps", "4", "--stage2_steps", "6",
            "--eval_interval", "100", "--dtype", "bfloat16"]
    eager = run(tmp_path / "eager", cache, *args, "--compile", "False")
    compiled = run(tmp_path / "compiled", cache, *args, "--compile", "True")
    for stage in ["base", "dmoe_stage1", "dmoe"]:
        logs = [[json.loads(l) for l in open(tmp_path / d / "logs" / f"{stage}.jsonl")] for d in ("eager", "compiled")]
        assert len(logs[0]) == len(logs[1]) > 0
        # the first step starts from identical weights: only bf16 rounding differs between the two
        assert abs(logs[0][0]["loss"] - logs[1][0]["loss"]) < 0.02, stage
    ckpt = load_checkpoint(str(tmp_path / "compiled" / "dmoe.pt"))
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    for lang, r in eager["variants"]["dmoe"].items():
        assert abs(compiled["variants"]["dmoe"][lang]["loss"] - r["loss"]) < 0.05 * r["loss"], lang


def test_trains_from_a_copied_cache_without_the_text_packages(tmp_path, cache, request):
    """The GPU-node case: only data_cache/ was copied over; train.py runs on it as it is."""
    args = ["--variants", "dmoe", "--base_steps", "2", "--stage1_steps", "1", "--stage2_steps", "1"]
    run(tmp_path / "here", cache, *args)           # prepares the cache where the packages are installed
    request.getfixturevalue("no_text_packages")    # from here on, as on a machine without them
    res = run(tmp_path / "there", cache, *args)
    assert res["langs"] == ["de", "nl", "ru", "uk", "ja", "zh"] and set(res["variants"]) == {"base", "dmoe"}
    with pytest.raises(SystemExit, match="not installed"):
        run(tmp_path / "elsewhere", str(tmp_path / "no_cache"), *args)


def test_log_interval_records(tmp_path, cache):
    """--log_interval N: a record every N steps (each one waits for the device), plus the stage's last
    step and every checkpoint step (a resumed log must end where its checkpoint does)."""
    run(tmp_path, cache, "--variants", "cpt", "--base_steps", "12", "--stage1_steps", "1", "--stage2_steps", "1",
        "--log_interval", "5", "--eval_interval", "100", "--ckpt_interval", "4")
    recs = [json.loads(l) for l in open(tmp_path / "logs" / "base.jsonl")]
    assert [r["step"] for r in recs] == [4, 5, 8, 10, 12]
    assert all(r["loss"] > 0 for r in recs) and "val_loss" in recs[-1]


def test_base_on_some_languages_then_every_stage_on_all(tmp_path, cache):
    """--base_langs: the base never draws a batch of the others (the paper's situation: languages new to
    the base); profile, groups and every later stage take all of them, and the report splits seen / new."""
    with pytest.raises(SystemExit, match="--n_groups 3 leaves no expert for the 3 languages the base saw"):
        run(tmp_path, cache, "--base_langs", "de,ru,ja", "--variants", "cpt,dmoe")   # 3 new ones alone: 3 taken
    # --n_groups 0: pairs of the seen languages, and under --new_experts own (the default) each new one alone
    res = run(tmp_path, cache, "--base_langs", "de,ru,ja", "--variants", "cpt,dmoe", "--n_groups", "0")
    assert load_checkpoint(str(tmp_path / "base.pt"))["sampled_langs"] == ["de", "ru", "ja"]
    assert load_checkpoint(str(tmp_path / "dmoe.pt"))["sampled_langs"] == res["langs"]
    assert res["base_langs"] == ["de", "ru", "ja"] and res["new_langs"] == ["nl", "uk", "zh"]
    assert sorted(len(g) for g in res["groups"][:2]) == [1, 2] and res["groups"][2:] == [["nl"], ["uk"], ["zh"]]
    assert len(res["groups"]) == 5 and [len(g) for g in res["random_groups"]] == [len(g) for g in res["groups"]]
    ppl = lambda v, l: res["variants"][v][l]["ppl"]
    gain = lambda ls: sum(ppl("base", l) / ppl("cpt", l) for l in ls) / len(ls)
    assert gain(res["new_langs"]) - 1 > 3 * (gain(res["base_langs"]) - 1)   # cpt learned most where base never was
    by = res["by_langs"]
    assert by["new"]["variants"]["cpt"] == pytest.approx(sum(ppl("cpt", l) for l in res["new_langs"]) / 3)
    assert set(by["seen"]["forced_group"]) == {"dmoe"}
    # the same folder asked for a base of every language refuses (config), and so does a copy of this
    # base.pt in a fresh folder (the checkpoint knows what it was trained on), each before any work
    with pytest.raises(SystemExit, match="base_langs='de,ru,ja'"):
        run(tmp_path, cache, "--base_langs", "all", "--variants", "cpt,dmoe", "--n_groups", "0")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "base.pt").write_bytes((tmp_path / "base.pt").read_bytes())
    with pytest.raises(SystemExit, match="base.pt was trained on de,ru,ja, not de,nl,ru,uk,ja,zh"):
        run(fresh, cache, "--variants", "cpt")
    for bad in ("de,xx", "de,de", ","):
        with pytest.raises(SystemExit, match="--base_langs"):
            run(tmp_path / "bad", cache, "--base_langs", bad)


def test_base_langs_auto_is_the_papers_situation_for_the_18():
    cfg = dict(train.DEFAULTS, base_langs="auto")
    eighteen = "ar bn de fr hi id it ja ko nl ru ta te th uk ur vi zh".split()
    assert train.resolve_base_langs(cfg, eighteen) == "ar bn fr hi id ta te ur vi zh".split()
    assert train.resolve_base_langs({**cfg, "langs": "ar,de,ru"}, ["ar", "de", "ru"]) == ["ar", "de", "ru"]
    assert train.resolve_base_langs({**cfg, "data_dir": "mine"}, eighteen) == eighteen
    assert train.resolve_base_langs({**cfg, "base_langs": "all"}, eighteen) == eighteen
    assert train.resolve_base_langs({**cfg, "base_langs": "zh,ar"}, eighteen) == ["ar", "zh"]
