"""group.py: grouping rules on toy similarity matrices, the eps layer rule, groups.json, the report."""
import json

import numpy as np
import pytest

import group as G

LANGS_18 = "ar bn de fr hi id it ja ko nl ru ta te th uk ur vi zh".split()


def block_similarity(clusters, order, within=0.8, across=0.05, noise=0.02, seed=0):
    """Similarity matrix for languages `order` where members of the same cluster are close."""
    rng = np.random.default_rng(seed)
    cid = {l: i for i, c in enumerate(clusters) for l in c}
    n = len(order)
    S = np.array([[within if cid[a] == cid[b] else across for b in order] for a in order])
    E = rng.uniform(-noise, noise, size=(n, n))
    S = S + (E + E.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


def as_sets(groups):
    return sorted(sorted(g) for g in groups)


CLUSTERS = [["de", "nl", "it"], ["ja", "zh", "ko"], ["ru", "uk", "th"]]
SHUFFLED = ["ja", "de", "ru", "nl", "zh", "th", "it", "uk", "ko"]


@pytest.mark.parametrize("rule", ["minmax", "seed", "complete", "average"])
def test_three_clear_clusters_are_found(rule):
    S = block_similarity(CLUSTERS, SHUFFLED)
    if rule == "minmax":
        groups = G.group_minmax(S, SHUFFLED, 3)
    elif rule == "seed":
        groups = G.group_seed_growth(S, SHUFFLED, 3)
    else:
        groups, merges = G.group_agglomerative(S, SHUFFLED, 3, linkage=rule)
        assert len(merges) == len(SHUFFLED) - 3
    assert as_sets(groups) == as_sets(CLUSTERS)


def test_cosine_similarity():
    V = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 3.0, 0], [0, 0, 0]])
    S = G.cosine_similarity(V)
    assert S.shape == (4, 4) and np.allclose(S, S.T)
    assert np.allclose(np.diag(S), 1.0)
    assert abs(S[0, 1] - 1) < 1e-12 and abs(S[0, 2]) < 1e-12
    assert np.all(S[3, :3] == 0)  # a zero vector is similar to nothing


@pytest.mark.parametrize("k", [2, 3, 6, 9])
def test_balanced_sizes_for_18_languages(k):
    rng = np.random.default_rng(k)
    S = G.cosine_similarity(rng.normal(size=(18, 40)))
    groups = {
        "minmax": G.group_minmax(S, LANGS_18, k),
        "seed": G.group_seed_growth(S, LANGS_18, k),
        "agglomerative": G.group_agglomerative(S, LANGS_18, k)[0],
        "random": G.random_groups(LANGS_18, k, seed=0),
    }
    for name, gs in groups.items():
        assert len(gs) == k, name
        assert [len(g) for g in gs] == [18 // k] * k, name
        assert sorted(l for g in gs for l in g) == sorted(LANGS_18), name


def test_uneven_sizes():
    langs = [f"l{i}" for i in range(10)]
    S = G.cosine_similarity(np.random.default_rng(1).normal(size=(10, 8)))
    assert G.balanced_sizes(10, 3) == [4, 3, 3]
    assert [len(g) for g in G.group_minmax(S, langs, 3)] == [4, 3, 3]
    assert [len(g) for g in G.group_seed_growth(S, langs, 3)] == [4, 3, 3]
    groups, _ = G.group_agglomerative(S, langs, 3)
    assert len(groups) == 3 and max(len(g) for g in groups) <= 4
    assert sorted(l for g in groups for l in g) == sorted(langs)


def test_ties_are_deterministic():
    langs = [f"l{i}" for i in range(6)]
    S = np.eye(6)  # every pair equally far apart
    assert G.group_minmax(S, langs, 3) == [["l0", "l1"], ["l2", "l3"], ["l4", "l5"]]
    assert G.group_seed_growth(S, langs, 3) == [["l0", "l1"], ["l2", "l3"], ["l4", "l5"]]
    assert G.group_agglomerative(S, langs, 3)[0] == [["l0", "l1"], ["l2", "l3"], ["l4", "l5"]]


def test_agglomerative_merge_tree():
    langs = ["a", "b", "c", "d"]
    S = np.array([[1, .9, .1, .2], [.9, 1, .3, .1], [.1, .3, 1, .8], [.2, .1, .8, 1]])
    groups, merges = G.group_agglomerative(S, langs, 1, linkage="complete")
    assert groups == [langs]
    # a+b (distance .1) -> id 4, c+d (.2) -> id 5, then 4+5 at complete-linkage distance 1 - .1
    assert [m[:2] for m in merges] == [[0, 1], [2, 3], [4, 5]]
    assert np.allclose([m[2] for m in merges], [0.1, 0.2, 0.9])
    assert [m[3] for m in merges] == [2, 2, 4]
    _, merges = G.group_agglomerative(S, langs, 1, linkage="average")
    assert np.isclose(merges[-1][2], 1 - np.mean([.1, .2, .3, .1]))


def test_agglomerative_respects_the_cap():
    # two very tight triples and a loose rest: with k=4 of 12 (cap 3) no group may exceed 3
    langs = [f"l{i}" for i in range(12)]
    S = block_similarity([langs[:6], langs[6:]], langs, within=0.9, across=0.0)
    groups, _ = G.group_agglomerative(S, langs, 4)
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    assert all(set(g) <= set(langs[:6]) or set(g) <= set(langs[6:]) for g in groups)


def u_shape():
    """Normalised deviations shaped like the paper's BLOOM-560M curve: eps=0.6 -> {0-4, 20-23}."""
    Dn = np.array([0.79, 0.75, 0.7, 0.65, 0.61] + [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0]
                  + [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5] + [0.62, 0.85, 0.95, 1.0])
    assert len(Dn) == 24
    return 0.056 + 0.009 * Dn  # the paper's raw spread 0.056-0.065


def test_select_layers_eps_rule():
    D = u_shape()
    assert G.select_layers(D, 0.6) == [0, 1, 2, 3, 4, 20, 21, 22, 23]
    assert G.select_layers(D, 0.8) == [21, 22, 23]
    assert G.select_layers(D, 1.0) == [23]


def test_select_layers_fallbacks():
    assert G.select_layers([0.3, 0.3, 0.3, 0.3], 0.6) == [2, 3]   # constant: top half, later layers
    assert G.select_layers([0.0] * 5, 0.6) == [2, 3, 4]
    assert G.select_layers([0.7], 0.6) == [0]                      # one layer
    assert G.select_layers([1, 3, 2], 0.0) == [0, 1, 2]            # eps <= 0: every layer, on request
    assert G.select_layers([1, 3, 2], 1.5) == [1]                  # eps > 1: the single largest


def test_random_groups_sizes_and_determinism():
    a = G.random_groups(LANGS_18, [3, 3, 6, 6], seed=7)
    assert [len(g) for g in a] == [3, 3, 6, 6]
    assert sorted(l for g in a for l in g) == sorted(LANGS_18)
    assert a == G.random_groups(LANGS_18, [3, 3, 6, 6], seed=7)
    assert a != G.random_groups(LANGS_18, [3, 3, 6, 6], seed=8)
    with pytest.raises(AssertionError):
        G.random_groups(LANGS_18, [3, 3], seed=0)


def toy_profile(repeats=2):
    S = block_similarity([LANGS_18[i::6] for i in range(6)], LANGS_18)
    D = u_shape()
    return {
        "langs": LANGS_18,
        "ffn_dev": {l: (D * (1 + 0.001 * i)).tolist() for i, l in enumerate(LANGS_18)},
        "attn_dev": {l: D[::-1].tolist() for l in LANGS_18},
        "similarity": S.tolist(),
        "similarity_repeats": [S.tolist()] * repeats,
    }


@pytest.mark.parametrize("method", G.METHODS)
def test_make_groups(method):
    prof = toy_profile()
    g = G.make_groups(prof, 6, method, eps=0.6, seed=0)
    assert g["method"] == method and g["k"] == 6 and g["langs"] == LANGS_18
    assert sorted(l for grp in g["groups"] for l in grp) == sorted(LANGS_18)
    assert all(g["groups"][g["lang_to_expert"][l]].count(l) == 1 for l in LANGS_18)
    assert g["moe_layers"] == [0, 1, 2, 3, 4, 20, 21, 22, 23]
    assert len(g["layer_dev"]) == 24 and len(g["similarity"]) == 18
    if method != "random":
        assert as_sets(g["groups"]) == as_sets([LANGS_18[i::6] for i in range(6)])
        assert g["repeat_rand"] == [1.0, 1.0]
    assert (len(g["merges"]) == 12) == (method == "agglomerative")
    json.dumps(g)  # JSON-able
    text = G.describe(g)                  # what train.py prints
    assert all(l in text for l in LANGS_18)
    assert "MoE layers [0, 1, 2, 3, 4, 20, 21, 22, 23]" in text and "group  5" in text
    from analysis.console import group_report   # the full console picture
    text = group_report(g)
    assert all(l in text for l in LANGS_18)
    assert "<- MoE" in text and "group  5" in text and "heatmap" in text


def test_languages_alone_get_an_expert_each_and_the_others_are_grouped_by_similarity(tmp_path, capsys):
    prof = toy_profile()
    alone = LANGS_18[3::6][::-1]              # one cluster of three, given out of order
    g = G.make_groups(prof, 8, "agglomerative", eps=0.6, alone=alone)
    rest = [l for l in LANGS_18 if l not in alone]
    assert g["alone"] == [l for l in LANGS_18 if l in alone]          # in the profile's order
    assert g["groups"][5:] == [[l] for l in g["alone"]]               # the last groups, one language each
    assert as_sets(g["groups"][:5]) == as_sets([LANGS_18[i::6] for i in (0, 1, 2, 4, 5)])   # the similarity's
    assert all(g["groups"][g["lang_to_expert"][l]] == [l] for l in alone)
    assert all(rg[5:] == g["groups"][5:] for rg in g["repeat_groups"]) and g["repeat_rand"] == [1.0, 1.0]
    assert len(g["merges"]) == len(rest) - 5                           # the tree of the grouped languages only
    from analysis.console import group_report
    assert "alone (new after base)" in G.describe(g) and "alone (new after base)" in group_report(g)
    # nothing alone: the plain grouping, exactly
    assert G.make_groups(prof, 6, "agglomerative", eps=0.6, alone=()) == dict(G.make_groups(prof, 6, "agglomerative", eps=0.6), alone=[])
    # group.py takes the run's languages alone from the profile, --alone overrides, --groups 0 is pairs
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(dict(prof, grouping={"n_groups": 0, "alone": alone})))
    out = str(tmp_path / "g.json")
    mine = G.main([str(p), "--out", out])
    assert mine["k"] == 11 and mine["groups"] == G.make_groups(prof, 11, "agglomerative", 0.0, alone=alone)["groups"]
    assert len(G.main([str(p), "--out", out, "--alone", "none"])["groups"]) == 9
    for bad, msg in ((["--alone", "xx"], "--alone xx: give distinct languages of the profile"),
                     (["--groups", "3"], r"--groups 3: choose 4..18 \(the profile has 18 languages, 3 of them alone\)"),
                     (["--alone", ",".join(LANGS_18)], "--alone ar,.*: give distinct languages of the profile .*, not all")):
        with pytest.raises(SystemExit, match=msg):
            G.main([str(p), "--out", out] + bad)
    capsys.readouterr()


def test_cli_writes_groups_json(tmp_path, capsys):
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(toy_profile()))
    out = tmp_path / "sub" / "groups.json"
    G.main([str(p), "--groups", "3", "--method", "minmax", "--eps", "0.8", "--out", str(out)])
    g = json.loads(out.read_text())
    assert [len(x) for x in g["groups"]] == [6, 6, 6] and g["moe_layers"] == [21, 22, 23]
    assert not (tmp_path / "sub" / "groups.json.tmp").exists()
    assert "MoE layers [21, 22, 23]" in capsys.readouterr().out
    from analysis import console                  # the full picture of that file, outside the method
    console.main([str(out)])
    assert "similarity heatmap" in capsys.readouterr().out


def ari_by_hand(labels_a, labels_b):
    """ARI from the contingency table as in Hubert & Arabie (1985), with numpy."""
    a_ids, a = np.unique(labels_a, return_inverse=True)
    b_ids, b = np.unique(labels_b, return_inverse=True)
    table = np.zeros((len(a_ids), len(b_ids)), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    pairs = lambda x: (x * (x - 1) / 2).sum()
    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total
    return (index - expected) / ((rows + cols) / 2 - expected)


def as_groups(labels, langs):
    return [[l for l, x in zip(langs, labels) if x == g] for g in dict.fromkeys(labels)]


def test_adjusted_rand_index_known_values():
    langs = ["a", "b", "c", "d"]
    # sklearn's documented examples: adjusted_rand_score([0, 0, 1, 2], [0, 0, 1, 1]) = 4/7 (both ways),
    # a single group vs all singletons = 0
    assert G.adjusted_rand_index([["a", "b"], ["c"], ["d"]], [["a", "b"], ["c", "d"]]) == pytest.approx(4 / 7)
    assert G.adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "b"], ["c"], ["d"]]) == pytest.approx(4 / 7)
    assert G.adjusted_rand_index([langs], [[l] for l in langs]) == 0.0
    # by hand: {abc}{def} vs {ab}{cd}{ef}: sum C(n_ij,2) = 2, E = 6 * 3 / 15 = 1.2, M = 4.5 -> 0.8 / 3.3
    six = "abcdef"
    assert G.adjusted_rand_index([list("abc"), list("def")], [list("ab"), list("cd"), list("ef")]) == \
        pytest.approx(8 / 33)
    # crossed halves: worse than chance
    assert G.adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]]) == pytest.approx(-0.5)
    # degenerate: identical trivial partitions are perfect matches; under two shared languages, nan
    assert G.adjusted_rand_index([[l] for l in six], [[l] for l in reversed(six)]) == 1.0
    assert G.adjusted_rand_index([list(six)], [list(six)]) == 1.0
    assert np.isnan(G.adjusted_rand_index([["a", "b"]], [["a"], ["x"]]))


def test_adjusted_rand_index_properties():
    rng = np.random.default_rng(0)
    langs = LANGS_18
    for _ in range(20):
        la, lb = rng.integers(0, 4, size=18), rng.integers(0, 5, size=18)
        A, B = as_groups(la, langs), as_groups(lb, langs)
        ari = G.adjusted_rand_index(A, B)
        assert ari == pytest.approx(ari_by_hand(la, lb), abs=1e-12)           # the contingency table by hand
        assert ari == pytest.approx(G.adjusted_rand_index(B, A), abs=1e-12)   # symmetric
        assert G.adjusted_rand_index(A, A) == pytest.approx(1.0)              # identical -> 1
        # blind to the order of the groups, of the languages in a group, and to the labels
        shuffled = [list(reversed(g)) for g in reversed(A)]
        assert G.adjusted_rand_index(shuffled, B) == pytest.approx(ari, abs=1e-12)
        assert G.adjusted_rand_index(sorted(A, key=len), B) == pytest.approx(ari, abs=1e-12)
    # only the languages both groupings have count: an extra language in one changes nothing
    A, B = [["ar", "de"], ["fr", "hi"]], [["ar", "de"], ["fr"], ["hi"]]
    assert G.adjusted_rand_index(A + [["zz"]], B) == G.adjusted_rand_index(A, B)
    # chance level: random groupings average about 0
    mean = np.mean([G.adjusted_rand_index(G.random_groups(langs, 6, seed=s), G.random_groups(langs, 6, seed=s + 100))
                    for s in range(200)])
    assert abs(mean) < 0.05
