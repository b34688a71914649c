"""
Are the default's groups the same at 1 and 2 threads? The same three bases were profiled at 1 thread by
`python experiments/regime/run.py eps0_k9 S` (OMP_NUM_THREADS=1, runs/regime/eps0_k9/sS/profile.json)
and at 2 threads by the default runs (runs/own/sS). This applies today's rule (the seen languages in
pairs, each new one alone) to the 1-thread profiles and compares with the 2-thread runs' groups.

    python experiments/default/threads_groups.py        # -> experiments/default/threads_groups.json
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import group  # noqa: E402
from common import save_json  # noqa: E402

out = {"command": "python experiments/default/threads_groups.py", "seeds": {}}
for s in range(3):
    with open(os.path.join(ROOT, f"runs/regime/eps0_k9/s{s}/profile.json")) as f:
        one = json.load(f)
    with open(os.path.join(ROOT, f"runs/own/s{s}/groups.json")) as f:
        two = json.load(f)
    g1 = group.make_groups(one, len(two["groups"]), eps=0.0, alone=two["alone"])["groups"]
    out["seeds"][s] = {"1_thread": g1, "2_threads": two["groups"], "same": g1 == two["groups"]}
    print(f"seed {s}: same groups at 1 and 2 threads: {g1 == two['groups']}")
save_json(out, os.path.join(ROOT, "experiments/default/threads_groups.json"))
