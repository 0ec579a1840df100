"""The study's paired comparison with random init on constructed results: tests matched by seed, per label
budget and on the integral, Holm across pretrainings, and a verdict that claims no labels saved beyond what
its own paired tests support."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from test_study import _rows, _study

from sslseg.study.analysis_schema import Cost, PretrainingResult
from sslseg.study.analyze import analyze
from sslseg.study.report import drawn_band, write_report
from sslseg.study.stats import holm

FRACTIONS = [0.1, 0.5, 1.0]
SEEDS = [0, 1, 2, 3, 4]
# seed-to-seed variation (which images were labelled), large against the effects below
SEED_NOISE = {0: -0.06, 1: 0.05, 2: -0.02, 3: 0.07, 4: -0.04}
OWN_NOISE = {0: 0.004, 1: -0.003, 2: 0.001, 3: -0.002, 4: 0.0}


def random_init(f, s):
    return 0.4 + 0.4 * f + SEED_NOISE[s]


def _analysis(tmp_path, scores):
    pretrainings = [{"name": "random", "init": "random"}] + [{"name": n, "method": n} for n in scores]
    study = _study(
        tmp_path,
        encoder_states=["finetuned"],
        seeds=SEEDS,
        label_fractions=FRACTIONS,
        pretrainings=pretrainings,
    )
    rows = _rows(study, {"random": random_init, **scores})
    return analyze(study, rows)["datasets"]["synth"]


def test_per_budget_and_integral_tests_are_paired_by_seed_and_holm_corrected(tmp_path):
    def simclr(f, s):
        return random_init(f, s) + 0.01 + OWN_NOISE[s]

    def densecl(f, s):
        return 0.4 + 0.4 * f + SEED_NOISE[(s + 1) % 5] + 0.03  # its own seed luck: pairs do not cancel

    a = _analysis(tmp_path, {"simclr": simclr, "densecl": densecl})
    g = a["groups"]["finetuned"]["aji"]["pretrainings"]
    base = np.array([[random_init(f, s) for f in FRACTIONS] for s in SEEDS])
    cols = {n: np.array([[fn(f, s) for f in FRACTIONS] for s in SEEDS]) for n, fn in [("simclr", simclr)]}
    cols["densecl"] = np.array([[densecl(f, s) for f in FRACTIONS] for s in SEEDS])
    for j in range(len(FRACTIONS)):
        raw = [
            st.ttest_rel(cols[n][:, j], base[:, j], alternative="greater").pvalue
            for n in ("simclr", "densecl")
        ]
        wil = [
            st.wilcoxon(cols[n][:, j], base[:, j], alternative="greater").pvalue
            for n in ("simclr", "densecl")
        ]
        for i, n in enumerate(("simclr", "densecl")):
            b = g[n]["budget_tests"][j]
            assert b["n_pairs"] == 5
            assert b["paired_t_p"] == pytest.approx(raw[i], rel=1e-9)
            assert b["paired_t_p_holm"] == pytest.approx(holm(raw)[i], rel=1e-9)
            assert b["wilcoxon_p"] == pytest.approx(wil[i], rel=1e-9)
            assert b["difference_mean"] == pytest.approx(np.mean(cols[n][:, j] - base[:, j]))
    # the consistent small gain is significant when paired, the larger one drowned in seed luck is not
    assert g["simclr"]["test"]["significant"] and g["simclr"]["test"]["paired_t_p_holm"] < 0.01
    assert g["simclr"]["test"]["welch_p"] > 0.3  # unpaired, the seed luck hides it
    assert not g["densecl"]["test"]["significant"]
    lo, hi = g["simclr"]["test"]["difference_ci"]
    assert lo > 0 and lo < g["simclr"]["test"]["difference_mean"] < hi
    # the integral test uses the per-seed integrals, matched by seed
    ints = {n: np.array(g[n]["integral_per_seed"]) for n in ("random", "simclr")}
    ref = st.ttest_rel(ints["simclr"], ints["random"], alternative="greater").pvalue
    assert g["simclr"]["test"]["paired_t_p"] == pytest.approx(ref, rel=1e-9)


def test_rows_that_choose_their_images_are_a_holm_family_of_their_own(tmp_path):
    """A row that chooses its images answers another question than the rows that train on random init's
    draws: adding one must not weaken their correction, and it is corrected only among its kind."""

    def simclr(n, s):
        return random_init(n / 16, s) + 0.01 + OWN_NOISE[s]

    def densecl(n, s):
        return random_init(n / 16, s) + 0.02 + OWN_NOISE[(s + 2) % 5]

    def chosen(n, s):
        return 0.62 + OWN_NOISE[s]  # the same images for every seed

    rows = [
        {"name": "random", "init": "random"},
        {"name": "simclr", "method": "simclr"},
        {"name": "densecl", "method": "densecl"},
        {"name": "chosen", "init": "random", "selection": {"strategy": "typiclust"}},
        {"name": "chosen2", "init": "random", "selection": {"strategy": "probcover"}},
    ]
    study = _study(
        tmp_path,
        encoder_states=["finetuned"],
        seeds=SEEDS,
        label_fractions=None,
        labelled_images=[4, 8],
        pretrainings=rows,
    )
    scores = {
        "random": lambda n, s: random_init(n / 16, s),
        "simclr": simclr,
        "densecl": densecl,
        "chosen": chosen,
        "chosen2": chosen,
    }
    g = analyze(study, _rows(study, scores))["datasets"]["synth"]["groups"]["finetuned"]["aji"][
        "pretrainings"
    ]
    for kind in (("simclr", "densecl"), ("chosen", "chosen2")):
        for j in range(2):
            raw = [g[n]["budget_tests"][j]["paired_t_p"] for n in kind]
            for i, n in enumerate(kind):
                assert g[n]["budget_tests"][j]["paired_t_p_holm"] == pytest.approx(holm(raw)[i], rel=1e-9)
        raw = [g[n]["test"]["paired_t_p"] for n in kind]
        assert [g[n]["test"]["paired_t_p_holm"] for n in kind] == pytest.approx(holm(raw), rel=1e-9)


def test_a_failed_cell_drops_its_seed_from_both_sides(tmp_path):
    def simclr(f, s):
        return np.nan if (s, f) == (3, 0.5) else random_init(f, s) + 0.01 + OWN_NOISE[s]

    g = _analysis(tmp_path, {"simclr": simclr})["groups"]["finetuned"]["aji"]["pretrainings"]
    assert g["simclr"]["integral_per_seed"][3] is None  # seed order kept, the gap marked
    assert g["simclr"]["test"]["n_pairs"] == 4
    assert [b["n_pairs"] for b in g["simclr"]["budget_tests"]] == [5, 4, 5]


def test_verdict_claims_no_labels_saved_without_a_significant_paired_test(tmp_path):
    # at 10 % the mean is far above random init's (point estimate: most labels saved), but one lucky
    # seed makes it so: the paired test does not support it
    lucky = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.6}

    def densecl(f, s):
        return random_init(f, s) + (lucky[s] if f == 0.1 else 0.0) + OWN_NOISE[s]

    a = _analysis(tmp_path, {"densecl": densecl})
    dense = a["groups"]["finetuned"]["aji"]["pretrainings"]["densecl"]
    assert dense["labels_saved"][0] > 0.3  # what the mean curves alone would claim
    assert not dense["budget_tests"][0]["significant"]
    v = a["verdict"]
    assert v["labels_saved_claim"] is None
    assert "saved" not in v["text"] and "fewer labels" in v["text"]
    assert "use densecl" not in v["text"]


def test_verdict_claims_only_the_labels_saved_its_tests_reach(tmp_path):
    def densecl(f, s):  # at 10 % it beats random init at 50 % (0.62 vs 0.60) in every seed
        return 0.6 + 0.2 * f + SEED_NOISE[s] + OWN_NOISE[s]

    a = _analysis(tmp_path, {"densecl": densecl})
    v = a["verdict"]
    assert v["significant"] and "use densecl" in v["text"]
    assert v["labels_saved_claim"] == pytest.approx(1 - 0.1 / 0.5)
    assert "more than 80% of the annotation saved" in v["text"]
    sup = a["groups"]["finetuned"]["aji"]["pretrainings"]["densecl"]["labels_saved_supported"]
    assert sup["beats_random_at"] == 0.5 and sup["next_p_holm"] > 0.05  # not random init at 100 %

    def small(f, s):  # better at the same budget, but far from random init at 50 %
        return random_init(f, s) + 0.01 + OWN_NOISE[s]

    v = _analysis(tmp_path, {"densecl": small})["verdict"]
    assert v["labels_saved_claim"] == 0.0
    assert "annotation saved" not in v["text"] and "cannot tell how much" in v["text"]


def test_report_shows_the_paired_columns_and_says_what_paired_means(tmp_path):
    def simclr(f, s):
        return random_init(f, s) + 0.01 + OWN_NOISE[s]

    study = _study(tmp_path, encoder_states=["finetuned"], seeds=SEEDS, label_fractions=FRACTIONS)
    analysis = analyze(study, _rows(study, {"random": random_init, "simclr": simclr, "densecl": simclr}))
    paths = write_report(tmp_path / "report", "t", analysis, {}, "name: t\n", "footer")
    md = paths["markdown"].read_text()
    assert "paired t p (Holm)" in md and "Wilcoxon p (Holm)" in md and "Welch p (Holm, unpaired)" in md
    assert "trained on that same set" in md
    assert "10%: paired Δ (95% CI), p" in md
    integrals = paths["integrals"].read_text().splitlines()
    assert "paired_t_p_holm" in integrals[0] and "welch_p_holm" in integrals[0]


TWO = [{"name": "random", "init": "random"}, {"name": "densecl", "method": "densecl"}]


def test_labels_saved_reads_as_words_where_a_share_means_nothing(tmp_path):
    # densecl: above random init at 10 %, below it at 50 %, above random init's best at 100 %
    def densecl(f, s):
        return random_init(f, s) + {0.1: 0.05, 0.5: -0.05, 1.0: 0.05}[f] + OWN_NOISE[s]

    study = _study(
        tmp_path, encoder_states=["finetuned"], seeds=SEEDS, label_fractions=FRACTIONS, pretrainings=TWO
    )
    analysis = analyze(study, _rows(study, {"random": random_init, "densecl": densecl}))
    g = analysis["datasets"]["synth"]["groups"]["finetuned"]["aji"]
    assert g["baseline_rises"]
    dense = g["pretrainings"]["densecl"]
    assert dense["labels_saved"][1] < 0  # the number a table used to print as a negative share
    assert dense["labels_saved_reading"] == ["saved", "not_better", "beyond_range"]
    md = write_report(tmp_path / "report", "t", analysis, {}, "", "")["markdown"].read_text()
    assert "none (not above random init)" in md and "above random init's score with 100%" in md
    assert "> range" not in md and f"{dense['labels_saved'][1]:.0%}" not in md
    assert "labels_saved_reading" in (tmp_path / "report" / "gains.csv").read_text().splitlines()[0]


def test_no_labels_saved_are_given_when_random_init_does_not_rise(tmp_path):
    def flat_random(f, s):  # more labels, a worse mean: seed noise and a short schedule can do this
        return {0.1: 0.5, 0.5: 0.6, 1.0: 0.45}[f] + SEED_NOISE[s]

    def densecl(f, s):  # at 10 % it beats random init at every budget, in every seed
        return 0.65 + OWN_NOISE[s] + SEED_NOISE[s]

    study = _study(
        tmp_path, encoder_states=["finetuned"], seeds=SEEDS, label_fractions=FRACTIONS, pretrainings=TWO
    )
    analysis = analyze(study, _rows(study, {"random": flat_random, "densecl": densecl}))
    ds = analysis["datasets"]["synth"]
    g = ds["groups"]["finetuned"]["aji"]
    assert not g["baseline_rises"]
    assert set(g["pretrainings"]["densecl"]["labels_saved_reading"]) == {"baseline_flat"}
    v = ds["verdict"]
    assert v["labels_saved_claim"] is None and "annotation saved" not in v["text"]
    assert "does not rise with annotation" in v["text"]
    md = write_report(tmp_path / "report", "t", analysis, {}, "", "")["markdown"].read_text()
    assert (
        "No share of labels saved is given" in md and "saved" not in md.split("No share")[0].split("gain")[-1]
    )
    assert "%: gain |" in md and "labels saved |" not in md


def test_curve_bands_are_drawn_only_from_three_seeds_and_within_the_score_range():
    cost = Cost(pretrain_seconds=None, finetune_seconds_mean=None, factor=None)
    e = PretrainingResult(
        mean=[0.3, 0.4, 0.5],
        ci_low=[-0.4, 0.2, 0.3],
        ci_high=[1.0, 0.6, 1.3],
        n_seeds=[2, 3, 5],
        integral_per_seed=[],
        integral_n_seeds=0,
        integral_mean=None,
        integral_ci=[None, None],
        relative_gain=[None] * 3,
        labels_saved=[None] * 3,
        random_needs=[None] * 3,
        cost=cost,
    )
    lo, hi = drawn_band(e)
    assert np.isnan(lo[0]) and np.isnan(hi[0])  # two seeds: no band
    np.testing.assert_allclose(lo[1:], [0.2, 0.3])
    np.testing.assert_allclose(hi[1:], [0.6, 1.0])
