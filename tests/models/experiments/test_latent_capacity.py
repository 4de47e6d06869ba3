"""The latent-capacity experiment: its pixel lines are the capacity protocol's, known answers in
latent space, the grid, the store, the summaries and the figure."""
import json
import math

import matplotlib
import numpy as np
import pytest

from uhn.models.experiments import capacity
from uhn.models.experiments import latent_capacity as L
from uhn.models.experiments.store import load_results

matplotlib.use("Agg")


@pytest.mark.parametrize("sim,conv,corruption", [("euclidean", "standard", "gaussian"),
                                                 ("manhattan", "standard", "mask_bottom"),
                                                 ("dot", "paper_code", "gaussian"),
                                                 ("kl", "standard", "mask_bottom")])
def test_pixel_space_is_the_capacity_protocol(sim, conv, corruption):
    """The same problem, retrieval and threshold: the pixel line is capacity.evaluate's number."""
    p = L.LatentPoint(n_memories=40, similarity=sim, convention=conv, corruption=corruption,
                      block=1)
    want = capacity.evaluate(p.capacity_point())
    got = L.evaluate(p)
    assert got["fraction_correct"] == want["fraction_correct"]
    assert got["fraction_correct_projected"] == want["fraction_correct"]   # dec(enc) = identity
    assert got["median_error"] == pytest.approx(want["median_error"], rel=1e-12)
    assert got["fraction_nearest"] <= got["fraction_correct"]   # identity implies error 0 <= 50


@pytest.mark.parametrize("corruption", ["gaussian", "mask_bottom"])
def test_latent_euclidean_on_the_whole_span_is_pixel_space(corruption):
    """N = 20 images, k >= N - 1: the stored-set PCA spans their affine hull, so it keeps every
    distance between memories, and a query's distance to each memory loses the same
    ||q_perp||^2 (its part orthogonal to the hull): the argmax, hence the retrieved memory, is the
    pixel one. fraction_nearest and the projected fraction equal pixel space's, k_used = 19."""
    base = dict(n_memories=20, similarity="euclidean", corruption=corruption)
    px = L.evaluate(L.LatentPoint(**base))
    lat = L.evaluate(L.LatentPoint(**base, k=64, fit="stored"))
    assert lat["k_used"] == 19
    assert lat["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert lat["mean_reconstruction_error"] < 1e-20
    assert lat["fraction_nearest"] == px["fraction_nearest"]
    assert lat["fraction_correct"] == px["fraction_correct"]
    # a narrower code loses information: at k = 2 retrieval is no longer the pixel one
    narrow = L.evaluate(L.LatentPoint(**base, k=2, fit="stored"))
    assert narrow["k_used"] == 2 and narrow["explained_variance"] < 0.5
    assert narrow["fraction_nearest"] != px["fraction_nearest"]


def test_kl_on_signed_codes_is_a_failed_row_not_a_zero(tmp_path):
    p = L.LatentPoint(n_memories=10, similarity="kl", k=4, fit="stored")
    (row,) = L.run([p], tmp_path / "r.jsonl")
    assert row["fraction_correct"] is None and "non-negative codes" in row["error"]
    assert L.capacity_table(L.summarise([row]))[0]["capacity"] is None


def test_heldout_fit_sees_no_stored_image():
    """The held-out PCA is fitted on the other 5,000 - N images: it explains the stored block
    less well than the block's own PCA of the same width."""
    base = dict(n_memories=50, similarity="euclidean", k=16)
    own = L.evaluate(L.LatentPoint(**base, fit="stored"))
    held = L.evaluate(L.LatentPoint(**base, fit="heldout"))
    assert held["k_used"] == own["k_used"] == 16
    assert held["mean_reconstruction_error"] > own["mean_reconstruction_error"]
    with pytest.raises(ValueError, match="leaves no image"):
        L.validate(L.LatentPoint(n_memories=5000, k=16, fit="heldout"))


def test_point_checks():
    with pytest.raises(ValueError, match="needs a latent width"):
        L.LatentPoint(fit="stored")
    with pytest.raises(ValueError, match="fit must be one of"):
        L.LatentPoint(k=16)
    with pytest.raises(ValueError, match="must be >= 1"):
        L.LatentPoint(k=0, fit="stored")
    with pytest.raises(ValueError, match="n_memories"):
        L.LatentPoint(n_memories=0)
    assert L.LatentPoint(k=16.0, fit="stored") == L.LatentPoint(k=16, fit="stored")
    assert L.LatentPoint(k=16, fit="heldout").space == "k=16 heldout"


def test_grid():
    pts = L.latent_vs_n(n_memories=(1000, 2000, 5000), ks=(16, 64), similarities=("euclidean",),
                        fits=("stored", "heldout"), paper_dot=False, full_rank=False)
    by_n = {}
    for p in pts:
        by_n.setdefault(p.n_memories, set()).add((p.corruption, p.space, p.block))
    # blocks per N: min(5, 5000 // N); no held-out fit where the block is every image
    assert {b for _, _, b in by_n[2000]} == {0, 1}
    assert {s for _, s, _ in by_n[5000]} == {"pixel", "k=16", "k=64"}
    assert len(by_n[1000]) == 2 * 5 * 5 and len(by_n[2000]) == 2 * 2 * 5
    assert len(by_n[5000]) == 2 * 1 * 3
    default = L.latent_vs_n(ks=(16,), similarities=("euclidean",), probes=(("gaussian", 0.5),),
                            blocks=1)
    assert sorted({p.n_memories for p in default}) == list(L.LATENT_N)
    with pytest.raises(ValueError, match="exceed"):
        L.latent_vs_n(n_memories=(6000,))
    control = L.latent_vs_n(n_memories=(100,), ks=(16,), similarities=("euclidean",), blocks=1,
                            probes=(("gaussian", 0.5),))
    assert [p.space for p in control] == ["pixel", "k=16", "k=784"]


def test_run_store_resume_and_summaries(tmp_path):
    path = tmp_path / "latent.jsonl"
    pts = L.latent_vs_n(n_memories=(5, 20), ks=(4,), similarities=("euclidean",), blocks=2,
                        probes=(("gaussian", 0.5),), paper_dot=False, full_rank=False)
    seen = []
    rows = L.run(pts, path, progress=lambda p: seen.append(p.computed))
    assert len(rows) == len(pts) == 2 * 2 * 2 and all(seen)
    stored = load_results(path)
    assert {r["key"] for r in stored} == {p.key() for p in pts}
    for r in stored:   # every parameter of its point is in the row
        assert L.LatentPoint.from_row(r).key() == r["key"]
    again = []
    assert L.run(pts, path, progress=lambda p: again.append(p.computed)) == rows
    assert again == [False] * len(pts)
    summ = L.summarise(rows)
    assert {s["space"] for s in summ} == {"pixel", "k=4"}
    assert all(s["n_blocks"] == 2 for s in summ)
    s0 = next(s for s in summ if s["space"] == "pixel" and s["n_memories"] == 5)
    vals = [r["fraction_correct"] for r in rows if r["k"] is None and r["n_memories"] == 5]
    assert s0["fraction_correct"] == pytest.approx(np.mean(vals))
    assert s0["fraction_correct_std"] == pytest.approx(np.std(vals))


def test_capacity_table_known_answer():
    def s(n, v, space="pixel"):
        return {"corruption": "gaussian", "level": 0.5, "line": "euclidean", "space": space,
                "n_memories": n, "fraction_correct": v}
    summ = [s(2, 1.0), s(10, 0.95), s(100, 0.5), s(1000, 0.92),            # 0.92 after a dip
            s(2, 0.8, "k=16"), s(10, 1.0, "k=16")]
    table = {t["space"]: t for t in L.capacity_table(summ)}
    assert table["pixel"]["capacity"] == 10 and table["pixel"]["at_max_n"] == 0.92
    assert table["k=16"]["capacity"] == 0
    text = L.format_table(L.capacity_table(summ), ["pixel", "k=16", "k=64"])
    assert "| gaussian 0.5 | euclidean | 10 (0.920) | 0 (1.000) |  |" in text
    assert ">= 1000 (0.950)" in L.format_table(L.capacity_table([s(1000, 0.95)]), ["pixel"])
    with pytest.raises(ValueError, match="unknown measure"):
        L.capacity_table(summ, measure="accuracy")


def test_figure(tmp_path):
    paths = L.make_latent_figures(tmp_path, results_path=tmp_path / "r.jsonl",
                                  n_memories=(5, 20), ks=(4,), similarities=("euclidean", "kl"),
                                  blocks=1, fits=("stored",), paper_dot=False, full_rank=False)
    assert [p.name for p in paths] == ["latent_capacity_mnist.png",
                                       "latent_capacity_mnist_nearest.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    rows = load_results(tmp_path / "r.jsonl")
    fig = L.plot_latent_capacity(rows)
    assert len(fig.axes) == 2 * 2                       # probes x similarities
    labels = [[c.get_label() for c in ax.containers] for ax in fig.axes]
    assert labels[0] == ["pixel", "k=4"] and labels[1] == ["pixel"]    # kl: n/a in latent space
    x, y = fig.axes[0].containers[0].lines[0].get_data()
    summ = {(s["n_memories"]): s["fraction_correct"] for s in L.summarise(rows)
            if s["space"] == "pixel" and s["line"] == "euclidean" and s["corruption"] == "gaussian"}
    assert list(y) == [summ[5], summ[20]]
