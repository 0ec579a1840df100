"""benchmarks/label_curve.py: the schedule is chosen on the protocol-validation slice alone, as the shortest
within the tolerance of the best, and the test scores are read at it."""

from __future__ import annotations

import pytest
from conftest import benchmark_module

from sslseg.study.store import JobRow

lc = benchmark_module("label_curve")


def test_the_shortest_schedule_within_tolerance_of_the_best_is_chosen():
    assert lc.choose_schedule({400: 0.50, 1000: 0.60, 2000: 0.605, 4000: 0.61}, tolerance=0.01) == 2000
    assert lc.choose_schedule({400: 0.50, 1000: 0.60, 2000: 0.605, 4000: 0.61}, tolerance=0.2) == 400
    assert lc.choose_schedule({400: 0.7, 4000: 0.6}) == 400  # longer is not better here
    with pytest.raises(ValueError, match="no schedule"):
        lc.choose_schedule({})


def _row(n: int, epochs: int, seed: int, val: float, test: float) -> JobRow:
    return JobRow(
        key=f"d/a{epochs}/finetuned/n{n}/s{seed}",
        kind="finetune",
        dataset="d",
        pretraining=f"a{epochs}",
        seed=seed,
        status="done",
        config={"train": {"epochs": epochs, "steps_per_epoch": 100}},
        metrics={"aji": test},
        info={"n_labelled_train": n, "best_val_score": 1.0, "last_val_score": val},  # the last epoch decides
    )


def test_the_curve_reads_test_scores_only_at_the_schedule_validation_chose():
    rows = [
        _row(8, 4, 0, val=0.50, test=0.90),  # the best test score, but validation does not choose it
        _row(8, 4, 1, val=0.52, test=0.90),
        _row(8, 20, 0, val=0.60, test=0.40),
        _row(8, 20, 1, val=0.62, test=0.44),
        _row(8, 40, 0, val=0.70, test=0.30),  # one draw only: not comparable with the complete schedules
        _row(64, 4, 0, val=0.70, test=0.55),
        _row(64, 4, 1, val=0.70, test=0.53),
    ]
    lines = lc.summary(rows)
    chosen = {
        line["annotated_train"]: line["chosen_on_validation"]
        for line in lines
        if "chosen_on_validation" in line
    }
    assert chosen[8]["steps"] == 2000 and chosen[8]["test_mean"] == pytest.approx(0.42)
    assert chosen[64]["steps"] == 400 and chosen[64]["test_sd"] == pytest.approx(0.0141, abs=1e-4)
    (gain,) = [line["gain_8_to_64"] for line in lines if "gain_8_to_64" in line]
    assert gain == pytest.approx(0.54 / 0.42 - 1, abs=1e-4)


def test_cells_run_before_the_last_score_was_recorded_read_it_from_their_epoch_log(tmp_path):
    logs = tmp_path / "cell" / "logs"
    (logs / "resumed-1").mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,val/score,train/loss\n0,99,0.40,\n0,99,,0.9\n1,199,0.65,\n")
    (logs / "resumed-1" / "metrics.csv").write_text("epoch,step,val/score\n2,299,0.55\n")
    row = JobRow(
        key="k", kind="finetune", dataset="d", pretraining="p", config={"output": str(tmp_path / "cell")}
    )
    assert lc.last_val_score(row) == pytest.approx(0.55)  # the last epoch's, not the best (0.65)
    recorded = JobRow(**{**row.__dict__, "info": {"last_val_score": 0.6}})
    assert lc.last_val_score(recorded) == pytest.approx(0.6)
    assert lc.last_val_score(JobRow(key="k", kind="finetune", dataset="d", pretraining="p")) is None


def test_the_last_epoch_is_found_by_its_number_not_by_the_order_the_logs_are_read(tmp_path):
    # a cell resumed twelve times: neither name order (resumed-10 before resumed-2) nor the order the parts
    # were written here (the last epoch's part neither first nor last) is the order of the epochs
    logs = tmp_path / "cell" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,val/score\n0,99,0.30\n")
    for n in (3, 11, 1, 12, 2, 7, 10, 4, 9, 5, 8, 6):
        (logs / f"resumed-{n}").mkdir()
        (logs / f"resumed-{n}" / "metrics.csv").write_text(f"epoch,step,val/score\n{n},{n}99,0.{60 - n}\n")
    row = JobRow(
        key="k", kind="finetune", dataset="d", pretraining="p", config={"output": str(tmp_path / "cell")}
    )
    assert lc.last_val_score(row) == pytest.approx(0.48)  # epoch 12's (scores fall: the best is epoch 1's)


def test_an_epoch_logged_twice_reads_the_part_written_last(tmp_path):
    """A run killed after logging epoch 3 and resumed from epoch 2's checkpoint logs epoch 3 again: the
    resumed part's row is the run that went on, whichever name or directory order the parts have."""
    import os

    for killed, resumed in (("a", "b"), ("b", "a")):  # one of the two is against the directory order
        logs = tmp_path / f"cell-{killed}" / "logs"
        for name, score, written in ((killed, 0.70, 1_000), (resumed, 0.50, 2_000)):
            (logs / name).mkdir(parents=True)
            (logs / name / "metrics.csv").write_text(f"epoch,step,val/score\n2,299,0.6\n3,399,{score}\n")
            os.utime(logs / name / "metrics.csv", ns=(written * 10**9, written * 10**9))
        row = JobRow(
            key="k", kind="finetune", dataset="d", pretraining="p", config={"output": str(logs.parent)}
        )
        assert lc.last_val_score(row) == pytest.approx(0.50), (killed, resumed)
