"""
One point of the paper's situation for one seed, landed as experiments/regime/<point>_s<seed>.json (the
run's results.json, its command and the thread count), so that a sweep stopped anywhere keeps every
finished run and `python experiments/regime/table.py` redraws the table from the files alone.

    python experiments/regime/run.py eps0 1             # point eps0, seed 1
    python experiments/regime/run.py eps0,eps0_half 0,1,2   # several, one after the other; done ones skipped
    python experiments/regime/run.py --list

Every point is the regime below plus its own settings. Runs of one seed share the dense base, runs that
also profile alike share the profile, and runs with the same schedule after base share cpt: a finished
run offers them to the others through runs/regime/_shared/, and train.py skips stages it finds done.
Set OMP_NUM_THREADS=1 to run two queues at once (two 1-thread processes do about the work of one 2-thread
process on a 2-core CPU); the thread count changes the last digits, so it is recorded. A point another
queue is running is skipped.
"""
import fcntl
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "experiments", "regime")
# eps and n_groups were train.py's defaults (0.6, 6) until the regime became the default (eps0_k9 below),
# and every language was grouped by similarity until --new_experts own; they are spelled out so that every
# point keeps meaning what it meant when it was measured
REGIME = {"langs": "18", "base_langs": "auto", "stage1_steps": 100, "stage2_steps": 900, "lr": 2e-3,
          "variants": "cpt,dmoe,random", "eps": 0.6, "n_groups": 6, "new_experts": "grouped"}
POINTS = {
    "base10": {},                                                   # the eps rule's MoE layers, 6 groups
    "eps0": {"eps": 0.0},                                           # every layer MoE
    "k1": {"top_k": 1},                                             # top-1 routing (no router gradient)
    "eps0_half": {"eps": 0.0, "stage1_steps": 500, "stage2_steps": 500},   # every layer, half the steps by group
    "eps0_k9": {"eps": 0.0, "n_groups": 9},                         # pairs: at most two new languages an expert
    "eps0_k9_center": {"eps": 0.0, "n_groups": 9, "profile_center": True},  # similarity of deviations minus their mean
    "eps0_center": {"eps": 0.0, "profile_center": True},            # 6 groups, centred similarity
    # the map's axes around eps0_k9, train.py's default since 2026-12-06 (issue 18): how many languages
    # the base saw, and the budget after base
    "k9_all18": {"eps": 0.0, "n_groups": 9, "base_langs": "all"},              # the base sees all 18
    "k9_base5": {"eps": 0.0, "n_groups": 9, "base_langs": "ar,fr,hi,vi,zh"},   # the base sees 5 (13 new)
    "k9_after05": {"eps": 0.0, "n_groups": 9, "stage1_steps": 50, "stage2_steps": 450},    # half the steps
    "k9_after2": {"eps": 0.0, "n_groups": 9, "stage1_steps": 200, "stage2_steps": 1800},   # twice the steps
    "k9_s1half": {"eps": 0.0, "n_groups": 9, "stage1_steps": 500, "stage2_steps": 500},    # stage 1 takes half
    # stage 2 without the load-balancing loss, as the authors' runs effectively had (their loss was constant)
    "k9_nobal": {"eps": 0.0, "n_groups": 9, "balance_coef": 0.0},
    # stage 2 keeps a share of stage 1's router loss: a pull toward the group's expert (not the paper's)
    "k9_prior03": {"eps": 0.0, "n_groups": 9, "router_alpha2": 0.3},
    "k9_prior": {"eps": 0.0, "n_groups": 9, "router_alpha2": 1.28},
    "k9_after2_prior03": {"eps": 0.0, "n_groups": 9, "stage1_steps": 200, "stage2_steps": 1800, "router_alpha2": 0.3},
    # k9_topk (the pull as a hinge: the group's expert among the token's top-2) was measured at commit 8f2d778
    # with --router_prior2 topk, removed after it lost to the cross-entropy pull (k9_topk_s0.json keeps it)
}
SHARED = {"base": ("base.pt",), "profile": ("profile.json",), "cpt": ("cpt_stage1.pt", "cpt.pt")}
BASE_KEYS = ("base_langs", "n_layer", "n_head", "n_embd", "block_size", "dropout", "vocab_size", "batch_size", "grad_accum", "base_steps",
             "base_lr", "sample_alpha")
PROFILE_KEYS = ("profile_method", "profile_steps", "profile_lr", "profile_batch", "profile_repeats", "profile_windows",
                "profile_center", "profile_split", "last_layers")


def copy(src, dst):
    """Copy whole or not at all: another queue may be reading dst's folder."""
    shutil.copy(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def run(point, seed):
    landed = os.path.join(HERE, f"{point}_s{seed}.json")
    if os.path.exists(landed):
        print(f"[regime] {point} seed {seed}: done ({os.path.relpath(landed, ROOT)})")
        return
    settings = dict(REGIME, **POINTS[point], seed=seed)
    out = os.path.join("runs", "regime", point, f"s{seed}")
    args = [a for k, v in settings.items() for a in (f"--{k}", str(v))] + ["--out", out]
    # what a shared stage depends on names its folder: a point that changes the base (BASE_KEYS) gets its
    # own base, one that changes the profile its own profile, one that changes the schedule its own cpt
    tag = lambda keys: "".join(f"-{k}={settings[k]}" for k in keys if k in settings and settings[k] != REGIME.get(k))
    base = os.path.join(ROOT, "runs", "regime", "_shared", f"s{seed}{tag(BASE_KEYS)}")
    shared = {"base": base, "profile": os.path.join(base, f"profile{tag(PROFILE_KEYS)}"),
              "cpt": os.path.join(base, f"cpt-{settings['stage1_steps']}-{settings['stage2_steps']}-{settings['lr']}")}
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)
    with open(os.path.join(ROOT, out, ".lock"), "a+") as lock:   # train.py's run lock: another queue has it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
        except BlockingIOError:
            print(f"[regime] {point} seed {seed}: running in another process, skipped", flush=True)
            return
    for kind, files in SHARED.items():   # what another point of this seed trained already
        for f in files:
            src, dst = os.path.join(shared[kind], f), os.path.join(ROOT, out, f)
            if os.path.exists(src) and not os.path.exists(dst):
                copy(src, dst)
    command = "python train.py " + " ".join(args)
    print(f"[regime] {command}", flush=True)
    with open(os.path.join(ROOT, out, "train.log"), "a") as log:
        rc = subprocess.call([sys.executable, "train.py"] + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc:
        with open(os.path.join(ROOT, out, "train.log")) as log:
            busy = "in use by another run" in log.read()[-2000:]
        print(f"[regime] {point} seed {seed}: " + ("running in another process, skipped" if busy else
              f"failed (exit {rc}); see {out}/train.log"), flush=True)
        return not busy
    for kind, files in SHARED.items():
        os.makedirs(shared[kind], exist_ok=True)
        for f in files:
            if not os.path.exists(os.path.join(shared[kind], f)):
                copy(os.path.join(ROOT, out, f), os.path.join(shared[kind], f))
    with open(os.path.join(ROOT, out, "results.json")) as f:
        res = json.load(f)
    res["command"] = command
    res["threads"] = int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count()
    with open(landed + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(landed + ".tmp", landed)
    print(f"[regime] {point} seed {seed}: {res['minutes']} min -> {os.path.relpath(landed, ROOT)}", flush=True)


def main(argv):
    if not argv or argv[0] == "--list":
        for name, extra in POINTS.items():
            print(f"{name:10s} {extra or '(the regime)'}")
        print("regime:", REGIME)
        return
    seed_arg = argv[1] if len(argv) > 1 else "0"
    if not all(s.strip().isdigit() for s in seed_arg.split(",")):
        raise SystemExit(f"error: seeds {seed_arg!r}: give them like 0,1,2")
    points, seeds = argv[0].split(","), [int(s) for s in seed_arg.split(",")]
    bad = [p for p in points if p not in POINTS]
    if bad:
        raise SystemExit(f"error: unknown point {','.join(bad)}; the points: {', '.join(POINTS)}")
    failed = [(p, s) for s in seeds for p in points if run(p, s)]   # a failed point does not stop the others
    if failed:
        raise SystemExit("error: failed: " + ", ".join(f"{p} seed {s}" for p, s in failed))


if __name__ == "__main__":
    main(sys.argv[1:])
