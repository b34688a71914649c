"""The step CLIs (group.py, ...) answer bad input with one line that names it, not a traceback."""
import json

import pytest

import group

PROFILE = {"langs": ["aa", "bb", "cc"], "ffn_dev": {"aa": [1.0, 2.0], "bb": [1.0, 2.5], "cc": [2.0, 1.0]},
           "similarity": [[1, .9, .1], [.9, 1, .2], [.1, .2, 1]]}


def write(tmp_path, obj, name="profile.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("profile, args, message", [
    (None, [], "cannot read .*missing.json"),
    ("{not json", [], "is not JSON"),
    ({"langs": ["aa"]}, [], "has no ffn_dev"),
    ({**PROFILE, "similarity": [[1, 0], [0, 1]]}, [], "the similarity is 2x2 .* for 3 languages"),
    ({**PROFILE, "similarity": [[1, float("nan"), 0], [0, 1, 0], [0, 0, 1]]}, [], "holds NaN"),
    ({**PROFILE, "similarity": [[1, "x", 0], [0, 1, 0], [0, 0, 1]]}, [], "is not a matrix of numbers"),
    (PROFILE, ["--groups", "1"], "--groups 1: choose 2..3"),          # (0 is pairs, as train.py's --n_groups)
    (PROFILE, ["--groups", "-1"], "--groups -1: choose 2..3"),
    (PROFILE, ["--groups", "100"], "--groups 100: choose 2..3"),
    (PROFILE, ["--groups", "2", "--eps", "nan"], "--eps must be a number"),
    (PROFILE, ["--groups", "2", "--out", "DIR"], "is a folder; give a file path"),
    (PROFILE, ["--groups", "2", "--out", "UNDER_FILE"], "lies under the file"),
])
def test_group_cli_refuses_with_one_line(tmp_path, profile, args, message):
    path = str(tmp_path / "missing.json") if profile is None else write(tmp_path, profile)
    (tmp_path / "afile").write_text("x")
    args = [str(tmp_path) if a == "DIR" else str(tmp_path / "afile" / "g.json") if a == "UNDER_FILE" else a for a in args]
    with pytest.raises(SystemExit, match=message) as e:
        group.main([path, *args, *([] if "--out" in args else ["--out", str(tmp_path / "g.json")])])
    assert "\n" not in str(e.value)


def test_group_cli_still_groups(tmp_path):
    g = group.main([write(tmp_path, PROFILE), "--groups", "2", "--out", str(tmp_path / "g.json")])
    assert sorted(map(sorted, g["groups"]))[0] == ["aa", "bb"]


@pytest.mark.parametrize("args, message", [
    (["--layers", "abc", "--experts", "2"], r"--layers 'abc': give block indices like 0,3 \(of 0..1\)"),
    (["--layers", "9", "--experts", "2"], r"layers must be a non-empty subset of 0..1, got \[9\]"),
    (["--layers", "0", "--experts", "0"], "need n_experts >= 1"),
    (["--layers", "0", "--experts", "2", "--top_k", "5"], "1 <= top_k <= n_experts, got 2, 5"),
    (["--layers", "0", "--experts", "2", "--out", "DIR"], "--out .* is a folder; give a file path"),
])
def test_upcycle_cli_refuses_with_one_line(tmp_path, args, message):
    import upcycle
    from model import GPT, GPTConfig, save_checkpoint
    m = GPT(GPTConfig(vocab_size=320, block_size=16, n_layer=2, n_head=2, n_embd=16))
    path = str(tmp_path / "base.pt")
    save_checkpoint(path, {"model": m.state_dict(), "model_args": m.config.__dict__.copy()})
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    with pytest.raises(SystemExit, match=message) as e:
        upcycle.main([path, *args, *([] if "--out" in args else ["--out", str(tmp_path / "moe.pt")])])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "moe.pt").exists()


def test_prepare_cli_refuses_with_one_line(tmp_path):
    from corpora import prepare
    (tmp_path / "afile").write_text("x")
    for argv, message in ((["--out", str(tmp_path / "afile")], "--out .*afile is a file; give another directory"),
                          (["--out", str(tmp_path / "afile" / "sub")], "lies under the file"),
                          (["--langs", "xx", "--out", str(tmp_path / "c")], "xx"),
                          (["--vocab_size", "100", "--out", str(tmp_path / "c")], "vocab_size=100")):
        with pytest.raises(SystemExit, match=message) as e:
            prepare.main(["--langs", "ar,de", *argv] if "--langs" not in argv else argv)
        assert "\n" not in str(e.value), argv


@pytest.mark.parametrize("script", ["profile.py", "group.py", "upcycle.py", "eval.py"])
def test_ctrl_c_in_a_step_cli_is_one_line(script):
    """Ctrl-C in a step CLI ends with one line, not a KeyboardInterrupt traceback (the signal arrives while
    the script is still importing torch or reading its arguments: what any Ctrl-C would see is the handler
    around main)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import argparse, runpy\n"
            "def interrupted(*args, **kwargs):\n    raise KeyboardInterrupt\n"
            "argparse.ArgumentParser.parse_args = interrupted\n"
            f"runpy.run_path({script!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-800:]
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted"), r.stderr[-300:]


@pytest.mark.parametrize("args, message", [
    (["--device", "foo"], "--device 'foo'"),
    (["--max_windows", "0"], "--max_windows and --batch_size must be at least 1"),
])
def test_eval_cli_refuses_with_one_line(tmp_path, args, message):
    import eval as evaluate
    with pytest.raises(SystemExit, match=message) as e:
        evaluate.main([str(tmp_path), *args])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--device", "foo"], "--device 'foo'"),
    (["--pictures", "FILE"], "is a file; give a folder"),
    ([], "say what to report"),
])
def test_report_cli_refuses_with_one_line(tmp_path, args, message):
    from analysis import report
    (tmp_path / "f.txt").write_text("x")
    args = [str(tmp_path / "f.txt") if a == "FILE" else a for a in args]
    with pytest.raises(SystemExit, match=message) as e:
        report.main([str(tmp_path), *args])
    assert "\n" not in str(e.value)


def test_report_of_several_runs_refuses_what_needs_one(tmp_path):
    """Two runs' results.json make a seed summary; --routing (one run's checkpoints) is refused, not dropped."""
    from analysis import report
    for name in ("s0", "s1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"variants": {}}))
    with pytest.raises(SystemExit, match="several runs make a seed summary; --routing") as e:
        report.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--routing"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("obj", [{"variants": {}, "groups": [["aa"]]}, {"seed": 0}, [1]])
def test_console_refuses_a_json_that_is_not_groups_or_profile(tmp_path, obj):
    from analysis import console
    with pytest.raises(SystemExit, match="is neither a groups.json nor a profile.json") as e:
        console.main([write(tmp_path, obj, "results.json")])
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import train
    root = tmp_path_factory.mktemp("tiny")
    train.main(["--preset", "tiny", "--langs", "de,nl,ru", "--n_groups", "2", "--vocab_size", "512",
                "--out", str(root / "run"), "--data_cache", str(root / "cache"), "--base_steps", "4",
                "--stage1_steps", "2", "--stage2_steps", "2", "--variants", "dmoe", "--eval_interval", "100"])
    return root


@pytest.mark.parametrize("args, message", [
    (["--data_cache", "NOPE"], "no meta.json in"),
    (["--ckpt", "NOPE"], "nope: no such checkpoint file"),
    (["--langs", "xx"], "--langs xx: not in"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--block_size", "100000"], "--block_size 100000: choose 2..64"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--ckpt", "MOE"], "is an MoE checkpoint"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--last_layers", "99"], "--last_layers 99: choose 1..2"),
    (["--out", "DIR"], "--out .* is a folder; give a file path"),
])
def test_profile_cli_refuses_with_one_line(tiny_run, args, message):
    import profile
    fill = {"NOPE": str(tiny_run / "nope"), "MOE": str(tiny_run / "run" / "dmoe.pt"), "DIR": str(tiny_run)}
    base = {"--ckpt": str(tiny_run / "run" / "base.pt"), "--data_cache": str(tiny_run / "cache")}
    given = dict(zip(args[::2], [fill.get(a, a) for a in args[1::2]]))
    argv = [x for k, v in {**base, "--out": str(tiny_run / "p.json"), **given}.items() for x in (k, v)]
    with pytest.raises(SystemExit, match=message) as e:
        profile.cli(argv)
    assert "\n" not in str(e.value)
    assert not (tiny_run / "p.json").exists()
