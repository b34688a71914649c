"""
Language grouping and MoE-layer selection for DMoE (docs/METHOD.md §3-4). Pure numpy.

Input: the profile written by profile.py -- per-language, per-layer FFN deviations d_l^x and the
cosine similarity of the languages' deviation vectors. Output: groups.json, which says
  - which layers become MoE layers  (§3: D_l = mean_x d_l^x, normalise, keep D^_l >= eps)
  - which languages share an expert (§4: balanced groups by similarity, one expert per group; a
    language the base never saw can be given an expert of its own: `alone`, docs/METHOD.md §4)

Grouping rules (distance = 1 - cosine similarity):
  minmax        the paper's 18-language rule: exhaustive search for the tightest subset, repeatedly
  seed          the paper's 128-language rule: seed with the closest pair, grow greedily
  agglomerative hierarchical clustering with a group-size cap (the project's default)
  random        random balanced groups (train.py's `random` variant: random groups of dmoe's sizes)

Usage (every setting not given is the run's, recorded in the profile: the groups train.py made):
  python group.py profile.json --out groups.json
  python group.py profile.json --out g3.json --groups 3 --method minmax      # the paper's 18-language rule
"""

import argparse
import itertools
import json
import math

import numpy as np

from common import normalized, save_json, unwritable

METHODS = ("agglomerative", "minmax", "seed", "random")
RUN_DEFAULTS = {"n_groups": 0, "group_method": "agglomerative", "eps": 0.0, "seed": 0}   # train.py's (a test checks)


def pair_count(n, n_alone=0):
    """--n_groups 0: the number of groups when the languages go two to a group, except the n_alone that
    have an expert of their own (18 languages: 9; with the 8 the base never saw alone: 5 + 8 = 13)."""
    return (n - n_alone + 1) // 2 + n_alone

# -----------------------------------------------------------------------------
# similarity

def cosine_similarity(V):
    """Cosine similarity of the rows of V (n, dim) -> (n, n). Rows are languages.
    A zero row (a language whose model did not move) has similarity 0 to every other row; the
    diagonal is always 1 (distance 0 to itself)."""
    V = np.asarray(V, dtype=np.float64)
    V = V.reshape(V.shape[0], -1)
    norms = np.linalg.norm(V, axis=1)
    U = V / np.where(norms > 0, norms, 1.0)[:, None]  # zero rows stay zero
    S = np.clip(U @ U.T, -1.0, 1.0)
    np.fill_diagonal(S, 1.0)
    return S

def _distance(S):
    """1 - similarity, symmetrised, zero diagonal."""
    S = np.asarray(S, dtype=np.float64)
    assert S.ndim == 2 and S.shape[0] == S.shape[1], f"similarity must be square, got {S.shape}"
    D = 1.0 - (S + S.T) / 2
    np.fill_diagonal(D, 0.0)
    return D

def balanced_sizes(n, k):
    """Sizes of k balanced groups of n items: they differ by at most one and the larger ones come
    first (the first n % k groups get ceil(n/k)). E.g. (18, 6) -> [3]*6, (10, 3) -> [4, 3, 3]."""
    assert 1 <= k <= n, f"need 1 <= k <= n, got k={k}, n={n}"
    q, r = divmod(n, k)
    return [q + 1] * r + [q] * (k - r)

def _check(S, langs, k):
    S = np.asarray(S, dtype=np.float64)
    n = len(langs)
    assert S.shape == (n, n), f"similarity is {S.shape} but there are {n} languages"
    assert 1 <= k <= n, f"cannot make {k} groups of {n} languages"
    return _distance(S), n

# -----------------------------------------------------------------------------
# the paper's two greedy balanced rules

MAX_SUBSETS = 5_000_000  # exhaustive search limit for group_minmax (C(18,9) = 48,620)


def minmax_subsets(n, k):
    """The largest number of subsets group_minmax would search for n languages in k groups."""
    sizes, left, most = balanced_sizes(n, k), n, 0
    for size in sizes[:-1]:
        most, left = max(most, math.comb(left, size)), left - size
    return most

def group_minmax(S, langs, k):
    """The paper's 18-language rule. While languages remain: among all subsets of the remaining
    languages of the next group size, pick the one with the smallest maximum pairwise distance;
    remove it; repeat. Sizes come from balanced_sizes(n, k) (larger groups first when k does not
    divide n). Ties on the max distance are broken by the smaller mean pairwise distance, then by
    the lexicographically first subset in `langs` order, so the result is deterministic.
    Groups are returned in the order they were formed (group 0 is the tightest), languages within a
    group in `langs` order."""
    D, n = _check(S, langs, k)
    n_sub = minmax_subsets(n, k)
    if n_sub > MAX_SUBSETS:   # train.py refuses this before any work (config.resolve_groups)
        raise ValueError(f"minmax would search {n_sub:,} subsets for {n} languages in {k} groups; "
                         f"use --method seed or agglomerative for this many languages")
    remaining = list(range(n))
    groups = []
    for size in balanced_sizes(n, k):
        if size == len(remaining):  # the last group takes what is left
            best = tuple(remaining)
        else:
            best, best_key = None, None
            combos = itertools.combinations(remaining, size)
            while True:  # vectorised over chunks of subsets
                chunk = np.array(list(itertools.islice(combos, 100_000)), dtype=np.int64)
                if len(chunk) == 0:
                    break
                sub = D[chunk[:, :, None], chunk[:, None, :]]  # (N, size, size)
                mx = sub.max(axis=(1, 2))
                mean = sub.sum(axis=(1, 2)) / max(size * (size - 1), 1)
                # lexsort: last key is primary; np.lexsort is stable so the first subset wins ties
                i = np.lexsort((np.round(mean, 12), np.round(mx, 12)))[0]
                key = (round(float(mx[i]), 12), round(float(mean[i]), 12))
                if best_key is None or key < best_key:
                    best, best_key = tuple(chunk[i].tolist()), key
        groups.append([langs[j] for j in sorted(best)])
        remaining = [j for j in remaining if j not in best]
    return groups

def group_seed_growth(S, langs, k):
    """The paper's 128-language rule. For each group (sizes from balanced_sizes): seed it with the
    closest remaining pair, then repeatedly add the remaining language whose maximum distance to the
    group members is smallest (ties: smaller mean distance, then earlier in `langs`) until the group
    is full. A group of size 1 takes the first remaining language. Groups in formation order."""
    D, n = _check(S, langs, k)
    remaining = list(range(n))
    groups = []
    for size in balanced_sizes(n, k):
        if size >= len(remaining):
            members = list(remaining)
        elif size == 1:
            members = [remaining[0]]
        else:
            r = np.array(remaining)
            sub = D[np.ix_(r, r)] + np.diag(np.full(len(r), np.inf))  # never pair a language with itself
            a, b = np.unravel_index(np.argmin(sub), sub.shape)  # argmin: first in row-major = deterministic
            members = [int(r[a]), int(r[b])]
            while len(members) < size:
                cand = [j for j in remaining if j not in members]
                to_group = D[np.ix_(cand, members)]  # (len(cand), len(members))
                keys = [(round(float(m), 12), round(float(a), 12), j)
                        for m, a, j in zip(to_group.max(1), to_group.mean(1), cand)]
                members.append(min(keys)[2])
        groups.append([langs[j] for j in sorted(members)])
        remaining = [j for j in remaining if j not in members]
    return groups

# -----------------------------------------------------------------------------
# agglomerative clustering with a size cap (the project's default)

def _ffd_fits(sizes, n_bins, cap):
    """First-fit-decreasing: can clusters of these sizes be packed into n_bins groups of <= cap?
    (A sufficient check -- FFD may miss a packing that exists, never invents one.)"""
    bins = []
    for s in sorted(sizes, reverse=True):
        for i in range(len(bins)):
            if bins[i] + s <= cap:
                bins[i] += s
                break
        else:
            bins.append(s)
            if len(bins) > n_bins:
                return False
    return True

def group_agglomerative(S, langs, k, linkage="complete"):
    """Agglomerative (hierarchical) clustering of the languages into k groups of at most
    cap = ceil(n/k) languages. Start from singletons; repeatedly merge the closest pair of clusters
    (linkage "complete" = max pairwise distance, "average" = mean, "single" = min) among the allowed
    merges, until k clusters remain. A merge is allowed, in order of preference:
      1. its union fits the cap AND the cluster sizes can afterwards still be packed into k groups of
         <= cap (first-fit-decreasing check) -- so with k | n the result is exactly balanced;
      2. (relaxation) its union fits the cap;
      3. (relaxation) no union fits the cap: merge the pair with the smallest union (closest among
         those); this group then exceeds the cap. It never happens while rule 1 finds a merge.
    Ties in distance go to the pair of clusters with the earliest members.
    Returns (groups, merges): groups ordered by their first language in `langs` order; merges is the
    tree as scipy does it: [a, b, distance, new_size] with singleton ids 0..n-1 (= index in langs)
    and the i-th merge creating cluster id n+i."""
    assert linkage in ("complete", "average", "single"), f"unknown linkage {linkage!r}"
    D, n = _check(S, langs, k)
    cap = math.ceil(n / k)
    C = D.copy()  # cluster-to-cluster distance, updated with the Lance-Williams formulas
    active = list(range(n))  # slot indices (a slot holds one live cluster)
    members = {i: [i] for i in range(n)}  # slot -> language indices
    ids = list(range(n))  # slot -> cluster id in the merge tree
    merges = []
    while len(active) > k:
        # slot s always holds language s as its first member, so (a, b) breaks ties by earliest members
        pairs = [(round(float(C[a, b]), 12), a, b) for ia, a in enumerate(active) for b in active[ia + 1:]]
        pairs.sort()
        sizes = {a: len(members[a]) for a in active}
        chosen = None
        for _, a, b in pairs:  # rule 1
            if sizes[a] + sizes[b] <= cap:
                after = [s for c, s in sizes.items() if c not in (a, b)] + [sizes[a] + sizes[b]]
                if _ffd_fits(after, k, cap):
                    chosen = (a, b)
                    break
        if chosen is None:  # rule 2
            chosen = next(((a, b) for _, a, b in pairs if sizes[a] + sizes[b] <= cap), None)
        if chosen is None:  # rule 3
            chosen = min(pairs, key=lambda p: (sizes[p[1]] + sizes[p[2]], p))[1:]
        a, b = chosen
        na, nb = sizes[a], sizes[b]
        dist = float(C[a, b])
        # merge b into slot a and update distances to every other cluster
        if linkage == "complete":
            new = np.maximum(C[a], C[b])
        elif linkage == "single":
            new = np.minimum(C[a], C[b])
        else:
            new = (na * C[a] + nb * C[b]) / (na + nb)
        C[a, :], C[:, a] = new, new
        C[a, a] = 0.0
        merges.append([ids[a], ids[b], dist, na + nb])
        ids[a] = n + len(merges) - 1
        members[a] = members[a] + members.pop(b)
        active.remove(b)
    groups = sorted((sorted(members[a]) for a in active), key=lambda g: g[0])
    return [[langs[j] for j in g] for g in groups], merges

# -----------------------------------------------------------------------------
# random baseline

def random_groups(langs, sizes, seed=0):
    """Random groups with the given sizes (a list of ints summing to len(langs), or an int k meaning
    balanced_sizes(n, k)). Deterministic for a given seed; languages within a group in `langs` order."""
    langs = list(langs)
    if isinstance(sizes, (int, np.integer)):
        sizes = balanced_sizes(len(langs), int(sizes))
    assert sum(sizes) == len(langs), f"sizes {sizes} do not add up to {len(langs)} languages"
    perm = np.random.default_rng(seed).permutation(len(langs))
    groups, i = [], 0
    for s in sizes:
        groups.append([langs[j] for j in sorted(perm[i:i + s].tolist())])
        i += s
    return groups

# -----------------------------------------------------------------------------
# which layers become MoE layers (docs/METHOD.md §3)

def select_layers(dev_per_layer, eps=0.6):
    """Dynamic layer selection. D^_l = (D_l - min D)/(max D - min D); layer l becomes an MoE layer iff
    D^_l >= eps. Since the largest layer always has D^ = 1 and the smallest D^ = 0, an ordinary
    eps in (0, 1] picks at least one layer and never all of them. Documented edge cases:
      - eps <= 0: every layer (train.py's default, and the all_layers baseline);
      - eps > 1 would select nothing: the single largest layer is used instead;
      - degenerate D (one layer, or max - min <= 1e-12 * max|D|, e.g. all zeros): the ranking
        carries no information, so take the top half, ceil(L/2) layers by D, ties going to the
        later layers (the paper's strictest eps=0.8 picked the last layers).
    Returns sorted layer indices."""
    D = np.asarray(dev_per_layer, dtype=np.float64).reshape(-1)
    L = len(D)
    assert L > 0 and np.all(np.isfinite(D)), f"deviations must be finite, got {D}"
    if eps <= 0:
        return list(range(L))
    lo, hi = D.min(), D.max()
    if L == 1 or hi - lo <= 1e-12 * max(abs(hi), abs(lo)):
        order = sorted(range(L), key=lambda l: (-D[l], -l))
        return sorted(order[:math.ceil(L / 2)])
    Dn = normalized(D)
    chosen = [l for l in range(L) if Dn[l] >= eps - 1e-12]
    if not chosen:  # eps > 1
        chosen = [int(np.argmax(D))]
    return chosen

# -----------------------------------------------------------------------------
# groups.json

def group_languages(S, langs, k, method="agglomerative", seed=0, linkage="complete"):
    """Dispatch to one grouping rule -> (groups, merges); merges is [] except for agglomerative."""
    if method == "agglomerative":
        return group_agglomerative(S, langs, k, linkage)
    if method == "minmax":
        return group_minmax(S, langs, k), []
    if method == "seed":
        return group_seed_growth(S, langs, k), []
    if method == "random":
        return random_groups(langs, k, seed), []
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

def within_similarity(S, langs, groups):
    """Mean off-diagonal similarity inside each group (None for a group of one)."""
    idx = {l: i for i, l in enumerate(langs)}
    out = []
    for g in groups:
        ii = [idx[l] for l in g]
        sub = np.asarray(S)[np.ix_(ii, ii)]
        m = len(ii)
        out.append(float((sub.sum() - np.trace(sub)) / (m * (m - 1))) if m > 1 else None)
    return out

def rand_index(groups_a, groups_b):
    """Fraction of language pairs on which two groupings agree (same group in both, or different in
    both). 1.0 = identical partitions."""
    ga = {l: i for i, g in enumerate(groups_a) for l in g}
    gb = {l: i for i, g in enumerate(groups_b) for l in g}
    langs = sorted(ga)
    pairs = list(itertools.combinations(langs, 2))
    if not pairs:
        return 1.0
    return sum((ga[x] == ga[y]) == (gb[x] == gb[y]) for x, y in pairs) / len(pairs)

def adjusted_rand_index(groups_a, groups_b):
    """Hubert-Arabie adjusted Rand index of two groupings (lists of lists of languages) over the
    languages both contain: the Rand index corrected for chance, 1.0 for identical partitions, ~0 for
    unrelated ones (negative when worse than chance); symmetric, blind to group order and labels.
    From the contingency table n_ij = |A_i & B_j| with row sums a_i, column sums b_j, n languages:
        ARI = (sum C(n_ij, 2) - E) / (M - E),  E = sum C(a_i, 2) * sum C(b_j, 2) / C(n, 2),
                                               M = (sum C(a_i, 2) + sum C(b_j, 2)) / 2.
    Degenerate cases: M == E only when both partitions are all singletons or both one group, i.e.
    identical -> 1.0; fewer than two shared languages (no pair to compare) -> nan."""
    ga = {l: i for i, g in enumerate(groups_a) for l in g}
    gb = {l: j for j, g in enumerate(groups_b) for l in g}
    shared = [l for l in ga if l in gb]
    if len(shared) < 2:
        return float("nan")
    n_ij = {}
    for l in shared:
        n_ij[ga[l], gb[l]] = n_ij.get((ga[l], gb[l]), 0) + 1
    a_i, b_j = {}, {}
    for (i, j), c in n_ij.items():
        a_i[i] = a_i.get(i, 0) + c
        b_j[j] = b_j.get(j, 0) + c
    index = sum(math.comb(c, 2) for c in n_ij.values())
    sum_a = sum(math.comb(c, 2) for c in a_i.values())
    sum_b = sum(math.comb(c, 2) for c in b_j.values())
    expected = sum_a * sum_b / math.comb(len(shared), 2)
    best = (sum_a + sum_b) / 2
    return 1.0 if best == expected else (index - expected) / (best - expected)

def make_groups(profile, k, method="agglomerative", eps=0.6, seed=0, linkage="complete", alone=()):
    """profile (profile.py output) -> the groups.json dict:
    langs, method, k, alone, groups, lang_to_expert (expert e serves group e), moe_layers, eps, layer_dev
    (D_l, mean FFN deviation per layer), layer_dev_norm (D^_l), attn_layer_dev, merges (agglomerative tree
    over the grouped languages, else []), similarity, group_similarity (mean within-group similarity).
    alone: languages that get an expert of their own (the last groups, in `langs` order); the others
    are grouped by their similarity into k - len(alone) groups. And, when the profile has per-repeat
    similarities, repeat_groups/repeat_rand: the grouping redone on each repeat's similarity alone and
    its Rand agreement with the final groups -- the stability check of the repeats (docs/METHOD.md §2)."""
    langs = list(profile["langs"])
    if profile.get("similarity") is not None:
        S = np.asarray(profile["similarity"], dtype=np.float64)
    else:
        S = cosine_similarity(profile["vectors"])
    ffn = np.array([profile["ffn_dev"][l] for l in langs], dtype=np.float64)  # (n, L)
    layer_dev = ffn.mean(axis=0)
    attn = profile.get("attn_dev")
    attn_layer_dev = np.array([attn[l] for l in langs], dtype=np.float64).mean(0) if attn else None
    alone = [l for l in langs if l in alone]
    rest = [i for i, l in enumerate(langs) if l not in alone]

    def grouped(S):   # the languages not alone, grouped by their similarity; then one group per alone
        g, m = group_languages(S[np.ix_(rest, rest)], [langs[i] for i in rest], k - len(alone), method, seed, linkage)
        return g + [[l] for l in alone], m
    groups, merges = grouped(S)
    out = {
        "langs": langs,
        "method": method,
        "k": k,
        "alone": alone,
        "groups": groups,
        "lang_to_expert": {l: e for e, g in enumerate(groups) for l in g},
        "moe_layers": select_layers(layer_dev, eps),
        "eps": eps,
        "layer_dev": layer_dev.tolist(),
        "layer_dev_norm": normalized(layer_dev).tolist(),
        "attn_layer_dev": None if attn_layer_dev is None else attn_layer_dev.tolist(),
        "merges": merges,
        "similarity": S.tolist(),
        "group_similarity": within_similarity(S, langs, groups),
        "seed": seed,
    }
    if method == "agglomerative":
        out["linkage"] = linkage
    reps = profile.get("similarity_repeats") or []
    if len(reps) > 1 and method != "random":
        out["repeat_groups"] = [grouped(np.asarray(R, dtype=np.float64))[0] for R in reps]
        out["repeat_rand"] = [rand_index(groups, g) for g in out["repeat_groups"]]
        rg = out["repeat_groups"]   # how well one repeat's groups predict another's (1 = the same, ~0 = chance)
        out["repeat_ari"] = float(np.mean([adjusted_rand_index(rg[a], rg[b])
                                           for a in range(len(rg)) for b in range(a + 1, len(rg))]))
    out["repeat_corr"] = profile.get("repeat_corr")
    return out

# -----------------------------------------------------------------------------
# what a run prints (the full picture, heatmap and bars: python analysis/console.py RUN)

def title(g):
    """'13 groups (agglomerative, linkage complete; de it ... alone (new after base)):', a groups.json's heading."""
    extra = f", linkage {g['linkage']}" if "linkage" in g else ""
    alone = f"; {' '.join(g['alone'])} alone (new after base)" if g.get("alone") else ""
    return f"{len(g['groups'])} groups ({g['method']}{extra}{alone}):"


def describe(g):
    """The groups with their mean similarity, how stable they are, and the MoE layers, as a few lines."""
    S = np.asarray(g["similarity"], dtype=np.float64)
    out = [title(g)]
    gsim = g.get("group_similarity") or within_similarity(S, g["langs"], g["groups"])
    for gi, (grp, s) in enumerate(zip(g["groups"], gsim)):
        out.append(f"  group {gi:2d} ({len(grp)}): {' '.join(grp):<40s} mean sim {'-' if s is None else f'{s:.4f}'}")
    if g.get("repeat_rand"):
        out.append(f"stability: the repeats' groups agree at adjusted Rand index {g['repeat_ari']:.2f}")
    Dn = normalized(g["layer_dev"])
    out.append(f"MoE layers {g['moe_layers']} (normalised FFN deviation >= eps {g['eps']}: "
               + " ".join(f"{x:.2f}" for x in Dn) + ")")
    return "\n".join(out)

# -----------------------------------------------------------------------------
# CLI

def read_profile(path):
    """profile.json checked for what make_groups reads, every problem one line naming the file."""
    try:
        with open(path) as f:
            prof = json.load(f)
    except OSError as e:
        raise SystemExit(f"error: cannot read {path} ({e.strerror}); give the profile.json that profile.py wrote")
    except ValueError:
        raise SystemExit(f"error: {path} is not JSON; give the profile.json that profile.py wrote")
    missing = [k for k in ("langs", "ffn_dev") if not isinstance(prof, dict) or k not in prof]
    if missing or (prof.get("similarity") is None and prof.get("vectors") is None):
        missing += [] if missing else ["similarity"]
        raise SystemExit(f"error: {path} has no {', '.join(missing)}; give the profile.json that profile.py wrote")
    langs = prof["langs"]
    try:
        S = np.asarray(prof["similarity"] if prof.get("similarity") is not None else cosine_similarity(prof["vectors"]),
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise SystemExit(f"error: {path}: the similarity is not a matrix of numbers; profile again")
    if S.shape != (len(langs), len(langs)) or set(prof["ffn_dev"]) != set(langs):
        raise SystemExit(f"error: {path}: the similarity is {'x'.join(map(str, S.shape))} and ffn_dev covers "
                         f"{len(prof['ffn_dev'])} languages, for {len(langs)} languages; the file is damaged, profile again")
    if not np.isfinite(S).all():
        raise SystemExit(f"error: {path}: the similarity holds NaN or inf; profile again (a lower --lr)")
    return prof


def main(argv=None):
    p = argparse.ArgumentParser(description="Group languages and select MoE layers from a profile.json")
    p.add_argument("profile", help="profile.json written by profile.py")
    p.add_argument("--groups", type=int, default=None, help="number of groups k (= experts); default: the run's")
    p.add_argument("--method", default=None, choices=METHODS, help="default: the run's")
    p.add_argument("--linkage", default="complete", choices=("complete", "average", "single"),
                   help="agglomerative linkage")
    p.add_argument("--eps", type=float, default=None, help="layer threshold on normalised deviation; default: the run's")
    p.add_argument("--seed", type=int, default=None, help="seed for --method random; default: the run's")
    p.add_argument("--alone", default=None, help="comma list of languages with an expert of their own, or none; "
                   "default: the run's (the languages its base never saw, under --new_experts own)")
    p.add_argument("--out", default="groups.json")
    args = p.parse_args(argv)
    profile = read_profile(args.profile)
    # every setting not given is the run's, recorded in the profile by train.py and profile.py (else the
    # pipeline's defaults), so that `python group.py RUN/profile.json` gives RUN/groups.json
    run = dict(RUN_DEFAULTS, **(profile.get("grouping") or {}))
    method = run["group_method"] if args.method is None else args.method
    eps = run["eps"] if args.eps is None else args.eps
    seed = run["seed"] if args.seed is None else args.seed
    langs = profile["langs"]
    alone = run.get("alone", []) if args.alone is None else [l for l in args.alone.split(",") if l not in ("", "none")]
    where = "--alone" if args.alone is not None else f"{args.profile}'s alone languages"
    if set(alone) - set(langs) or len(set(alone)) != len(alone) or len(alone) >= len(langs):
        raise SystemExit(f"error: {where} {','.join(alone)}: give distinct languages of the profile "
                         f"({','.join(langs)}), not all of them, or none")
    n = len(langs)
    k = run["n_groups"] if args.groups is None else args.groups
    k = k or pair_count(n, len(alone))
    lo = max(2, len(alone) + 1)   # the languages not alone need at least one group
    if not lo <= k <= n:
        raise SystemExit(f"error: --groups {k}: choose {lo}..{n} (the profile has {n} languages"
                         + (f", {len(alone)} of them alone)" if alone else ")"))
    if method not in METHODS:
        raise SystemExit(f"error: {args.profile} asks for grouping {method!r}; pass --method (one of {', '.join(METHODS)})")
    if not math.isfinite(eps):
        raise SystemExit(f"error: --eps must be a number, got {eps}")
    why = unwritable(args.out)   # save_json makes the missing folders
    if why:
        raise SystemExit(f"error: --out {args.out} {why}; give a file path")
    g = make_groups(profile, k, method, eps, seed, args.linkage, alone)
    print(describe(g))
    save_json(g, args.out)
    print(f"\nwrote {args.out}")
    return g

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("\ninterrupted: nothing was written; run the same command again")
