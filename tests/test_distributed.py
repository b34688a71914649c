"""torchrun with 2 CPU processes (gloo): the same model as one process with the same global batch, through
intermediate checkpoints and evaluations, and a run killed mid-stage resumes to the same weights."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# checkpoints every 5 steps and evaluations every 4 cross every stage (every rank must reach each checkpoint)
ARGS = ["--preset", "tiny", "--langs", "de,nl,ru,uk", "--n_groups", "2", "--vocab_size", "512",
        "--variants", "cpt,dmoe", "--base_steps", "12", "--stage1_steps", "6", "--stage2_steps", "6",
        "--profile_repeats", "1", "--ckpt_interval", "5", "--eval_interval", "4", "--device", "cpu"]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def command(n_proc, out, cache, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_proc}",
            "train.py", *ARGS, "--out", str(out), "--data_cache", str(cache), *extra]


def launch(n_proc, out, cache, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(command(n_proc, out, cache, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)   # a rank stuck at a barrier would hang here, not pass
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def kill_all(p, out):
    """SIGKILL the torchrun launcher and its workers (they run in sessions of their own)."""
    os.killpg(p.pid, signal.SIGKILL)
    killed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(out).encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
        except OSError:
            pass
    p.wait()
    for pid in killed:   # wait until it is gone, or a zombie (whose files and locks are closed)
        while True:
            try:
                with open(f"/proc/{pid}/status") as f:
                    if "\nState:\tZ" in f.read():
                        break
            except OSError:
                break
            time.sleep(0.01)


def test_two_processes_match_one(tmp_path):
    cache = tmp_path / "cache"
    one = launch(1, tmp_path / "one", cache)
    two = launch(2, tmp_path / "two", cache)
    assert (tmp_path / "two" / "results.json").exists()
    assert "wrote" in two.stdout and two.stdout.count("wrote ") == one.stdout.count("wrote ")  # rank 0 only
    # the log has the evaluations of both processes' runs at the same steps
    vals = [[r["step"] for r in map(json.loads, open(tmp_path / d / "logs" / "base.jsonl")) if "val_loss" in r]
            for d in ("one", "two")]
    assert vals[0] == vals[1] == [4, 8, 12]
    # Same global batch split across ranks: the same update up to float summation order. Stage 2 of an
    # MoE differs more: its load-balancing loss is computed on each rank's tokens, not the global batch.
    for name, tol in [("base", 1e-4), ("cpt", 1e-4), ("dmoe_stage1", 1e-4), ("dmoe", 1e-2)]:
        a = load_checkpoint(str(tmp_path / "one" / f"{name}.pt"))["model"]
        b = load_checkpoint(str(tmp_path / "two" / f"{name}.pt"))["model"]
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < tol, (name, worst)
    # profiling splits the languages across the ranks and gathers them: the same profile
    pa = json.load(open(tmp_path / "one" / "profile.json"))
    pb = json.load(open(tmp_path / "two" / "profile.json"))
    assert pa["langs"] == pb["langs"]
    for l in pa["langs"]:
        assert pa["ffn_dev"][l] == pytest.approx(pb["ffn_dev"][l], rel=1e-4)


def test_killed_torchrun_resumes_from_an_intermediate_checkpoint(tmp_path):
    cache = tmp_path / "cache"
    extra = ["--variants", "cpt", "--base_steps", "300"]
    launch(2, tmp_path / "straight", cache, *extra)
    # the same command, killed (SIGKILL, every process) as soon as base has its first checkpoint
    out = tmp_path / "killed"
    p = subprocess.Popen(command(2, out, cache, *extra), cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not (out / "base.pt").exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    kill_all(p, out)
    partial = load_checkpoint(str(out / "base.pt"))
    assert not partial["done"] and partial["step"] % 5 == 0 and partial["step"] < 300
    again = launch(2, out, cache, *extra)
    assert "resuming from step" in again.stdout
    for name in ("base", "cpt"):
        a = load_checkpoint(str(tmp_path / "straight" / f"{name}.pt"))["model"]
        b = load_checkpoint(str(out / f"{name}.pt"))["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_work(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(command(3, tmp_path / "out", tmp_path / "cache", "--batch_size", "8"), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "error: --batch_size 8 must be divisible by the number of processes (3)" in r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out" / "config.json").exists()
