"""analysis/plots.py: the text renderers, train.py's logs, and every picture as a PNG and as its text fallback."""
import json
import os
import sys

import numpy as np
import pytest

from analysis import plots as P

LANGS = ["aa", "bb", "cc"]
LANG_TO_EXPERT = {"aa": 0, "bb": 2, "cc": 1}


def _picture_inputs(tmp_path):
    rng = np.random.default_rng(0)
    prof = {"langs": LANGS, "ffn_dev": {l: list(rng.random(4)) for l in LANGS},
            "attn_dev": {l: list(rng.random(4)) for l in LANGS},
            "similarity": [[1.0, 0.2, 0.1], [0.2, 1.0, 0.3], [0.1, 0.3, 1.0]]}
    groups = {"groups": [["aa", "cc"], ["bb"]], "moe_layers": [0, 3]}
    run = tmp_path / "run"
    os.makedirs(run / "logs")
    (run / "logs" / "cpt.jsonl").write_text("\n".join(
        [f'{{"step": {s}, "tokens": {100 * s}, "loss": {4 - 0.1 * s}, "lr": 0.001}}' for s in range(1, 11)]
        + ['{"step": 10, "tokens": 1000, "loss": 3.0, "lr": 0.001, "val_loss": 3.1}', "garbage {", "[1, 2]"]))
    (run / "logs" / "dmoe_stage1.jsonl").write_text(
        "\n".join(f'{{"step": {s}, "tokens": {100 * s}, "loss": {4 - 0.1 * s}}}' for s in range(1, 4)))
    (run / "logs" / "dmoe.jsonl").write_text(
        "\n".join(f'{{"step": {s}, "tokens": {100 * s}, "loss": {3.7 - 0.1 * s}}}' for s in range(1, 8)))
    os.makedirs(run / "old")
    (run / "old" / "log.txt").write_text("step 00001/00010 | loss 3.50 | dt 5ms\n")   # not train.py's: not read
    return prof, groups, run


def _routing_result(top_k=2):
    """A routing_matrix-shaped dict: 2 MoE layers, 3 languages, 3 experts."""
    rng = np.random.default_rng(0)
    M = rng.random((2, 3, 3))
    M /= M.sum(-1, keepdims=True)
    own = np.stack([M[:, i, LANG_TO_EXPERT[l]] for i, l in enumerate(LANGS)], axis=1)  # (2, 3)
    load = M.mean(1)
    cv = load.std(-1) / load.mean(-1)
    return {"langs": LANGS, "layers": [0, 1], "matrix": M, "top1": M, "prob": M, "own_group_share": own,
            "own_group_top1": own, "load": load, "load_cv": cv, "load_top1": load, "load_top1_cv": cv,
            "top_k": top_k}


def test_read_logs_reads_train_py_logs(tmp_path):
    _, _, run = _picture_inputs(tmp_path)
    logs = P.read_logs(str(run))
    assert set(logs) == {"cpt", "dmoe_stage1", "dmoe"}          # RUN/logs/<stage>.jsonl only
    assert len(logs["cpt"]) == 11 and logs["cpt"][-1]["val_loss"] == 3.1   # non-object lines skipped
    merged = P.merge_stages(logs)
    assert list(merged) == ["cpt", "dmoe"]
    toks = [r["tokens"] for r in merged["dmoe"]]
    assert len(toks) == 10 and toks == sorted(toks) and toks[-1] == 1000
    assert [r["step"] for r in merged["dmoe"]] == list(range(1, 11))


def test_text_renderers():
    assert P.text_bar(1.0, 1.0, 4) == "████" and P.text_bar(0.5, 1.0, 4) == "██"
    assert P.text_bar(1 / 32, 1.0, 4) == "▏" and P.text_bar(2.0, 1.0, 4) == "████"   # 1/8 cell; capped
    assert P.text_bar(1.0, 0.0) == "" and P.text_bar(float("nan"), 1.0) == ""
    assert P.sparkline([0, 1, 2, 3]) == "▁▃▆█" and P.sparkline([1, 1]) == "▁▁"
    assert P.sparkline([0.5], lo=0, hi=1) == "▅"
    text = P.text_heatmap([[0, np.nan], [1, 0.5]], ["r0", "r1"], ["c0", "c1"], title="t", bounds={1})
    lines = text.splitlines()
    assert lines[0] == "t" and lines[-1].endswith("0 .. 1")
    assert "r0 " + "  " + "│" + "  " in text and "r1 ██│▒▒" in text and "┼" in text   # NaN blank, group line
    S = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    S_ord, order, bounds = P.similarity_order(S, LANGS, [["cc", "aa"], ["bb"]])
    assert order == ["cc", "aa", "bb"] and bounds == {2} and S_ord[0, 1] == 0.9
    sim = P.text_similarity(S, LANGS)
    assert "similarity heatmap" in sim and "0.1 .. 0.9" in sim   # off-diagonal range, languages as given


def test_pictures_written(tmp_path):
    pytest.importorskip("matplotlib")
    prof, groups, run = _picture_inputs(tmp_path)
    paths = [P.plot_deviation(prof, str(tmp_path / "dev.png")),
             P.plot_similarity(prof, groups, str(tmp_path / "sim.png")),
             P.plot_curves(str(run), str(tmp_path / "curves.png")),
             P.plot_routing(_routing_result(), str(tmp_path / "routing.png"), LANG_TO_EXPERT)]
    for p in paths:
        assert p is not None and os.path.getsize(p) > 1000
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (run / "profile.json").write_text(json.dumps(prof))
    written = P.write_pictures(str(tmp_path / "pics"), str(run), {"dmoe": (_routing_result(), LANG_TO_EXPERT)})
    assert sorted(os.path.basename(w) for w in written) == ["curves.png", "deviation.png", "routing_dmoe.png",
                                                           "similarity.png"]


def test_pictures_text_fallback(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)   # `import matplotlib` now raises ImportError
    prof, groups, run = _picture_inputs(tmp_path)
    assert P.plot_deviation(prof, str(tmp_path / "dev.png")) is None
    assert P.plot_similarity(prof, groups, str(tmp_path / "sim.png")) is None
    assert P.plot_curves(str(run), str(tmp_path / "curves.png")) is None
    assert P.plot_routing(_routing_result(), str(tmp_path / "routing.png"), LANG_TO_EXPERT) is None
    out = capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))
    assert "ffn" in out and "attn" in out                       # deviation sparklines / bars
    assert "similarity" in out and "┼" in out    # similarity heatmap, ordered by group, with group lines
    assert "aa" in out and "cc" in out
    assert "cpt" in out and "dmoe" in out and "dmoe_stage1" not in out   # stages merged
    assert "routing, layer 0" in out and "█" in out
    # the order by group: aa, cc, bb
    sim = out[out.index("language similarity"):]
    assert sim.index("\naa") < sim.index("\ncc") < sim.index("\nbb")
    # top_k >= E: the routing picture shows first choices (the slot shares are uniform by construction)
    P.plot_routing(_routing_result(top_k=3), str(tmp_path / "routing.png"), LANG_TO_EXPERT, "all")
    assert "routing of all, layer 1: first-choice share" in capsys.readouterr().out
