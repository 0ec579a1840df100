"""The study report: one self-contained HTML page (figures embedded), a Markdown summary and CSV tables.

The verdict comes first; then, per dataset, the score curves, the significance table, gains and labels saved,
compute cost, the representation analysis and example predictions.

Each section is built once, as a `Section` of blocks (see `sslseg.study.sections`), and rendered to both
HTML and Markdown.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from sslseg.atomic import write_json, write_text
from sslseg.study.analysis_schema import Analysis, DatasetAnalysis, Group, PairedTest, PretrainingResult
from sslseg.study.figures import file_base64, png_base64
from sslseg.study.sections import (
    Block,
    Code,
    Figure,
    Section,
    Table,
    Text,
    Verdicts,
    render_html,
    render_markdown,
)
from sslseg.study.spec import BASELINE
from sslseg.study.verdict import PAIRED_MEANING, count_text, format_p


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _colours(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: ("black" if n == BASELINE else cmap(i % 10)) for i, n in enumerate(names)}


def curve_axis(group: Group) -> tuple[list[float], list[str], str]:
    """The curves' x values, tick labels and axis title for one analysed group.

    An image-count study plots the annotated images of each budget, validation included (mean over seeds of
    the cells' n_labelled_total); a fraction study keeps the fraction and names the images under it."""
    budgets, annotated = group.budgets, group.annotated
    known = all(n is not None for n in annotated)
    if group.budget_key == "labelled_images":
        if known:
            return annotated, [count_text(n) for n in annotated], "annotated images (training + validation)"
        return budgets, [str(int(b)) for b in budgets], "labelled images (validation count not recorded)"
    ticks = [
        f"{f:.0%}" + (f"\n{count_text(n)} img" if n is not None else "")
        for f, n in zip(budgets, annotated, strict=True)
    ]
    return budgets, ticks, "labelled fraction of the training images"


def budget_label(group: Group, j: int) -> str:
    """Budget j for a table header, with the annotated images (training + validation) where recorded:
    "10% (7 images)", "8 images", "74 images (8 + validation)"."""
    b, n = group.budgets[j], group.annotated[j]
    if group.budget_key == "label_fraction":
        return f"{b:.0%}" + (f" ({count_text(n)} images)" if n is not None else "")
    if n is None:
        return f"{int(b)} labelled"
    return f"{count_text(n)} images" if n == b else f"{count_text(n)} images ({int(b)} + validation)"


MIN_BAND_SEEDS = 3  # the curves' confidence bands are drawn where at least this many seeds finished


def drawn_band(e: PretrainingResult) -> tuple[np.ndarray, np.ndarray]:
    """A curve's confidence band as drawn: within [0, 1], and absent where fewer than MIN_BAND_SEEDS seeds
    finished (a t-interval from two seeds spans most of [0, 1] and hides every curve)."""
    lo = np.array([np.nan if v is None else v for v in e.ci_low], dtype=float)
    hi = np.array([np.nan if v is None else v for v in e.ci_high], dtype=float)
    banded = np.array(e.n_seeds) >= MIN_BAND_SEEDS
    return np.clip(np.where(banded, lo, np.nan), 0, 1), np.clip(np.where(banded, hi, np.nan), 0, 1)


def curves_figure(ds: DatasetAnalysis, metric: str) -> str:
    """Score vs labelled budget, mean and confidence band over seeds, one panel per encoder state."""
    states = list(ds.groups)
    fig, axes = plt.subplots(1, len(states), figsize=(5.2 * len(states), 3.8), squeeze=False)
    for ax, state in zip(axes[0], states, strict=True):
        g = ds.groups[state][metric]
        colours = _colours(list(g.pretrainings))
        xs, ticks, title = curve_axis(g)
        x = np.array(xs, dtype=float)
        for name, e in g.pretrainings.items():
            mean = np.array([np.nan if v is None else v for v in e.mean], dtype=float)
            style = "--" if name == BASELINE else "-"
            ax.plot(x, mean, style, marker="o", color=colours[name], label=name)
            ax.fill_between(x, *drawn_band(e), color=colours[name], alpha=0.12)
        ax.set_xscale("log")
        ax.set_xticks(x, ticks)
        ax.minorticks_off()
        ax.set_xlabel(title)
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{state} encoder")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    return png_base64(fig)


def heatmap_figure(matrix: list[list[float]], labels: list[str], title: str) -> str:
    fig, ax = plt.subplots(figsize=(0.7 * len(labels) + 2.5, 0.6 * len(labels) + 2))
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return png_base64(fig)


def scatter_figure(points: dict[str, Any], title: str) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    xy = np.array(points["xy"], dtype=float)
    classes = points.get("classes") or ["image"] * len(xy)
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=14, label=c)
    ev = points.get("explained") or []
    if len(ev) >= 2:
        ax.set_xlabel(f"PC1 ({ev[0]:.0%})")
        ax.set_ylabel(f"PC2 ({ev[1]:.0%})")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return png_base64(fig)


# ------------------------------------------------------------------------------------- the tables
def _interval(ci: list[float | None] | None, spec: str = "+.3f") -> str:
    ci = ci or [None, None]
    if all(v is None or not math.isfinite(v) for v in ci):
        return "–"
    return f"{_fmt(ci[0], spec)} – {_fmt(ci[1], spec)}"


def significance_table(group: Group) -> Table:
    """One row per pretraining: its integral, the paired comparison with random init (the main test) and
    the unpaired Welch test as a check, all Holm-corrected across pretrainings."""
    header = [
        "pretraining",
        "integral (mean)",
        "95% CI",
        "paired Δ vs random (95% CI)",
        "paired t p (Holm)",
        "Wilcoxon p (Holm)",
        "Welch p (Holm, unpaired)",
        "significant",
        "cost ×",
        "pretraining s",
    ]
    rows = []
    for name, e in group.pretrainings.items():
        cost = [_fmt(e.cost.factor, ".2f"), _fmt(e.cost.pretrain_seconds, ".0f")]
        integral = [name, _fmt(e.integral_mean), _interval(e.integral_ci, ".3f")]
        if name == BASELINE:
            rows.append([*integral, "baseline", "", "", "", "", *cost])
            continue
        t = e.test or PairedTest()
        rows.append(
            [
                *integral,
                f"{_fmt(t.difference_mean, '+.3f')} ({_interval(t.difference_ci)})",
                format_p(t.paired_t_p_holm),
                format_p(t.wilcoxon_p_holm),
                format_p(t.welch_p_holm),
                "yes" if t.significant else "no",
                *cost,
            ]
        )
    return Table(header, rows)


def budget_table(group: Group) -> Table:
    """Per label budget, each pretraining's paired difference with random init and its Holm p-value."""
    header = ["pretraining"] + [
        f"{budget_label(group, j)}: paired Δ (95% CI), p" for j in range(len(group.budgets))
    ]
    rows = [
        [
            name,
            *[
                f"{_fmt(b.difference_mean, '+.3f')} ({_interval(b.difference_ci)}), {format_p(b.paired_t_p_holm)}"
                for b in e.budget_tests
            ],
        ]
        for name, e in group.pretrainings.items()
        if name != BASELINE and e.budget_tests
    ]
    return Table(header, rows)


def saved_cell(group: Group, saved: float | None, needs: float | None, reading: str) -> str:
    """One labels-saved figure in words: a share only where it means one (see `analyze.saved_reading`)."""
    if reading == "saved" and saved is not None:
        needs_text = f" (random init needs {count_text(needs)})" if group.labels_in_images and needs else ""
        return f"{saved:.0%} saved{needs_text}"
    if reading == "beyond_range":
        top = group.labels_x[-1]
        most = f"{count_text(top)} images" if group.labels_in_images else budget_label(group, -1)
        return f"above random init's score with {most}"
    if reading == "not_better":
        return "none (not above random init)"
    return "–"


def gain_table(group: Group) -> Table:
    """Per budget, each pretraining's relative gain and, where random init's curve rises so that it can be
    read, the share of labels saved (with the images random init needs for the same score)."""
    readable = group.baseline_rises
    header = ["pretraining"] + [
        f"{budget_label(group, j)}: gain" + (" / labels saved" if readable else "")
        for j in range(len(group.budgets))
    ]
    rows = []
    for name, e in group.pretrainings.items():
        if name == BASELINE:
            continue
        readings = e.labels_saved_reading or ["unknown"] * len(group.budgets)
        cells = []
        for g, s, n, r in zip(e.relative_gain, e.labels_saved, e.random_needs, readings, strict=True):
            cells.append(_fmt(g, "+.1%") + (f" / {saved_cell(group, s, n, r)}" if readable else ""))
        rows.append([name, *cells])
    return Table(header, rows)


def flat_baseline_text(group: Group, metric: str) -> str:
    """Why no labels-saved figure is given when random init's mean does not rise with annotation."""
    base = group.pretrainings.get(BASELINE)
    points = (
        ", ".join(f"{_fmt(m)} at {budget_label(group, j)}" for j, m in enumerate(base.mean))
        if base is not None
        else ""
    )
    return (
        f"No share of labels saved is given: random init's mean {metric} does not rise with every added "
        f"annotation here ({points}), so 'how many images would random init need for this score' has no "
        "answer in these results. The spread between seeds, too short a schedule or budgets too close "
        "together each flatten a curve; more seeds, a longer schedule or budgets further apart show it."
    )


PAIRED_COLUMNS = (
    "n_pairs",
    "difference_mean",
    "paired_t_p",
    "paired_t_p_holm",
    "wilcoxon_p",
    "wilcoxon_p_holm",
)


def _test_columns(test: PairedTest | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """Those fields of a test for a CSV row; empty for random init, which is not tested against itself."""
    return {k: getattr(test, k) if test is not None else None for k in keys}


def write_csv_tables(analysis: Analysis, out: Path) -> list[Path]:
    """curves.csv, integrals.csv and gains.csv: every number of the report, for other tools."""
    curves, integrals, gains = [], [], []
    for ds_name, ds in analysis.datasets.items():
        for state, by_metric in ds.groups.items():
            for metric, g in by_metric.items():
                # the budget column: "fraction" or "labelled_images", as the study's axis
                column = "fraction" if g.budget_key == "label_fraction" else "labelled_images"
                for name, e in g.pretrainings.items():
                    key = {"dataset": ds_name, "state": state, "metric": metric, "pretraining": name}
                    budget_tests = e.budget_tests or [None] * len(g.budgets)
                    for j, b in enumerate(g.budgets):
                        at = {column: b}
                        curves.append(
                            key
                            | at
                            | {"mean": e.mean[j], "ci_low": e.ci_low[j]}
                            | {"ci_high": e.ci_high[j], "n_seeds": e.n_seeds[j]}
                            | {"annotated_images": g.annotated[j]}
                        )
                        gains.append(
                            key
                            | at
                            | {"annotated_images": g.annotated[j], "relative_gain": e.relative_gain[j]}
                            | {"labels_saved": e.labels_saved[j], "random_needs": e.random_needs[j]}
                            | {"labels_saved_reading": (e.labels_saved_reading or [None] * len(g.budgets))[j]}
                            | {"labels_counted_in": "annotated images" if g.labels_in_images else column}
                            | _test_columns(budget_tests[j], PAIRED_COLUMNS)
                        )
                    integrals.append(
                        key
                        | {"integral_mean": e.integral_mean, "reference": g.reference}
                        | _test_columns(e.test, (*PAIRED_COLUMNS, "welch_p_holm", "permutation_p_holm"))
                        | _test_columns(e.test, ("significant",))
                        | {"cost_factor": e.cost.factor, "pretrain_seconds": e.cost.pretrain_seconds}
                    )
    paths = []
    for name, rows in (("curves", curves), ("integrals", integrals), ("gains", gains)):
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        write_text(out / f"{name}.csv", buf.getvalue())
        paths.append(out / f"{name}.csv")
    return paths


def representation_sections(rep: dict[str, Any]) -> list[Section]:
    """The sections of one dataset's representation analysis (the dict `representation_analysis` gives)."""
    if rep.get("error"):
        text = f"Representation analysis could not run: {rep['error']}"
        return [Section("Representation analysis", [Text(text, note=True)], level=3)]
    sections = []
    if rep.get("cka_between") or rep.get("cka_finetuning"):
        blocks: list[Block] = []
        if c := rep.get("cka_between"):
            labels = c["labels"]
            rows = [[a, *[_fmt(v, ".2f") for v in row]] for a, row in zip(labels, c["matrix"], strict=True)]
            blocks += [Text(c["what"], note=True), Figure(heatmap_figure(c["matrix"], labels, "linear CKA"))]
            blocks.append(Table(["", *labels], rows))
        if c := rep.get("cka_finetuning"):
            stages = len(next(iter(c["per_stage"].values())))
            header = ["pretraining", *[f"stage {i + 1}" for i in range(stages)]]
            rows = [[n, *[_fmt(v, ".2f") for v in vals]] for n, vals in c["per_stage"].items()]
            blocks += [Text(c["what"], note=True), Table(header, rows)]
        sections.append(Section("Representation similarity (linear CKA)", blocks, level=3))
    if r := rep.get("retrieval"):
        header = ["pretraining", "Ω pretrained encoder", "Ω fine-tuned encoder"]
        rows = [[n, _fmt(v.get("pretrained")), _fmt(v.get("finetuned"))] for n, v in r["omega"].items()]
        text = (
            f"Nearest-neighbour retrieval (Ω): the share of {r['n_images']} held-out images whose nearest "
            f"neighbour in PCA-reduced encoder space has the same {r['class_name']}; chance is {r['chance']:.3f}."
        )
        blocks = [Text(text), Table(header, rows)]
        sections.append(Section("Retrieval of classes never trained on", blocks, level=3))
    if e := rep.get("embedding_map"):
        figure = Figure(scatter_figure(e, e["title"]))
        sections.append(Section("Map of the encoder embeddings", [figure], level=3))
    if w := rep.get("weight_change"):
        header = ["pretraining", "encoder change", "decoder change"]
        rows = [[n, _fmt(v.get("encoder")), _fmt(v.get("decoder"))] for n, v in w["values"].items()]
        blocks = [Text(w["what"], note=True), Table(header, rows)]
        sections.append(Section("How far fine-tuning moves the weights", blocks, level=3))
    if u := rep.get("uncertainty"):
        header = ["pretraining", "mean uncertainty", "mean error", "Spearman ρ (uncertainty, error)", "p"]
        rows = [
            [
                n,
                _fmt(v["mean_uncertainty"]),
                _fmt(v["mean_error"]),
                _fmt(v["rho"], "+.2f"),
                _fmt(v["p"], ".3g"),
            ]
            for n, v in u["values"].items()
        ]
        sections.append(
            Section("Prediction uncertainty", [Text(u["what"], note=True), Table(header, rows)], level=3)
        )
    if rep.get("examples_png"):
        sections.append(Section("Example predictions", [Figure(rep["examples_png"])], level=3))
    return sections


def dataset_sections(name: str, ds: DatasetAnalysis) -> list[Section]:
    """One dataset's score sections: its curves, then per encoder state the tests, gains and per-budget
    comparisons on the primary metric, and the other metrics' integrals."""
    from sslseg.segmentation.tasks import task_named  # torch and the networks: only when reporting

    metric, state = ds.primary_metric, ds.main_state
    ref = ds.references[metric]
    axis_name = "label fractions" if ds.budget_axis.budget_key == "label_fraction" else "image counts"
    caption = (
        f"Lines: mean test {metric} over seeds; bands: the confidence interval of that mean, drawn where at "
        f"least {MIN_BAND_SEEDS} seeds finished."
    )
    head: list[Block] = [Figure(curves_figure(ds, metric)), Text(caption, note=True)]
    if ds.failed:
        head.append(Text(f"Failed jobs (see the store for their errors): {', '.join(ds.failed)}", note=True))
    sections = [Section(f"{name} ({task_named(ds.task).display_name})", head)]
    note = (
        f"Label-efficiency integral: area under the {metric} curve over the studied {axis_name}, divided "
        f"by their range and by the reference score {_fmt(ref.score)} ({ref.source}). Tests are one-sided "
        "(pretraining better than random init) and Holm-corrected across pretrainings; the paired t-test "
        "over seeds decides significance, the Wilcoxon signed-rank test checks it without assuming normal "
        "differences, and the unpaired Welch test shows what ignoring the pairing would give."
    )
    for st, by_metric in ds.groups.items():
        g = by_metric[metric]
        blocks: list[Block] = [Text(note, note=True), significance_table(g)]
        if (gains := gain_table(g)).rows:
            text = (
                "Relative gain over random init and the share of labels saved, per budget (point estimates "
                "from the mean curves; the paired tests below say what the seeds support):"
                if g.baseline_rises
                else "Relative gain over random init per budget (point estimates from the mean curves; the "
                "paired tests below say what the seeds support):"
            )
            blocks += [Text(text), gains]
            if not g.baseline_rises:
                blocks.append(Text(flat_baseline_text(g, metric), note=True))
        if (per_budget := budget_table(g)).rows:
            text = (
                "Paired difference with random init at each label budget (same labelled images per seed), "
                "one-sided paired t-test p after Holm correction across pretrainings:"
            )
            blocks += [Text(text), per_budget]
        sections.append(Section(f"{metric}, {st} encoder", blocks, level=3))
    by_metric = ds.groups[state]
    if others := [m for m in by_metric if m != metric]:
        rows = [
            [n, *[_fmt(by_metric[m].pretrainings[n].integral_mean) for m in others]]
            for n in by_metric[metric].pretrainings
        ]
        title = f"Other metrics ({state} encoder), label-efficiency integral"
        sections.append(Section(title, [Table(["pretraining", *others], rows)], level=3))
    return sections


def earlier_settings_section(rows: list[Any], superseded: list[dict[str, Any]]) -> Section | None:
    """The results that were made with other settings than the study's now: done cells kept although a
    setting changed (they count in the analysis above) and results moved aside by `--rerun-changed` (they do
    not), each with the settings that changed; None when there are none."""
    table = []
    for r in rows:
        if r.changed and r.status == "done":
            score = ", ".join(f"{k} {_fmt(v)}" for k, v in (r.metrics or {}).items() if isinstance(v, float))
            table.append([r.key, ", ".join(r.changed), "kept, in the analysis", score[:60], ""])
    for old in superseded:
        metrics = old.get("metrics") or {}
        score = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if isinstance(v, float))
        table.append(
            [old["key"], ", ".join(old.get("changed") or []), "moved aside", score[:60], old["moved_to"]]
        )
    if not table:
        return None
    note = Text(
        "These results were made before the settings named here changed. `sslseg study run --rerun-changed` "
        "runs the kept ones again; results moved aside stay in their folders, out of the analysis.",
        note=True,
    )
    return Section(
        "Results of earlier settings", [note, Table(["job", "changed", "where", "scores", "folder"], table)]
    )


ENOUGH_DRAWS = 10  # random draws (seeds) per budget before the chosen images' comparison means much


def selection_section(compared: list[Any]) -> Section | None:
    """Chosen images against random draws (`selection_analysis.AgainstDraws`), with each proposal's contact
    sheet; None when the study chooses no images."""
    if not compared:
        return None
    header = [
        "dataset",
        "selection",
        "budget",
        "chosen: mean (seeds)",
        "random draws: mean [CI] (n)",
        "Welch p",
        "Mann–Whitney p",
        "draws beaten",
        "worst seed ≥ draws' median",
    ]
    rows = []
    for c in compared:
        mean, lo, hi = c.draws_ci
        rows.append(
            [
                c.dataset,
                f"{c.row} ({c.selection})",
                str(c.budget),
                f"{_fmt(c.mean)} ({len(c.scores)})",
                f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}] ({len(c.draws)})",
                format_p(c.welch_p),
                format_p(c.mann_whitney_p),
                f"{c.share_beaten:.0%}",
                "yes" if c.worst_at_median else "no",
            ]
        )
    note = Text(
        f"Each row's images are chosen once per budget ({compared[0].metric} over training seeds); each seed of "
        "random init annotates another random draw. p-values are one-sided (the chosen images score higher).",
        note=True,
    )
    blocks: list[Block] = [note, Table(header, rows)]
    fewest = min(len(c.draws) for c in compared)
    if fewest < ENOUGH_DRAWS:
        blocks.append(
            Text(
                f"Only {fewest} random draw{'s' if fewest != 1 else ''} at some budget: too few to know how far "
                "draws spread, so these tests can show only large differences. Run at least "
                f"{ENOUGH_DRAWS} seeds to compare chosen images with the draws a user could get.",
                note=True,
            )
        )
    for c in compared:
        if c.contact_sheet is not None:
            blocks += [
                Text(f"{c.dataset}, {c.row}, {c.budget} images:"),
                Figure(file_base64(c.contact_sheet)),
            ]
    return Section("Chosen images against random draws", blocks)


def write_report(
    out: Path,
    study_name: str,
    analysis: Analysis | dict[str, Any],
    representation: dict[str, dict[str, Any]] | None = None,
    settings_yaml: str = "",
    footer: str = "",
    earlier: Section | None = None,
    chosen: Section | None = None,
) -> dict[str, Path]:
    """Write report.html, report.md and the CSV tables into `out`; returns their paths. The analysis is
    `analyze`'s result, typed or in its JSON form."""
    if isinstance(analysis, dict):
        analysis = Analysis.from_dict(analysis)
    out.mkdir(parents=True, exist_ok=True)
    representation = representation or {}
    datasets = analysis.datasets
    verdict: list[Block] = [
        Verdicts([ds.verdict.text for ds in datasets.values()]),
        Text(PAIRED_MEANING, note=True),
    ]
    verdict += [Text(f"{name}: {ds.accounting}", note=True) for name, ds in datasets.items()]
    sections = [Section("Verdict", verdict)]
    for name, ds in datasets.items():
        sections += dataset_sections(name, ds)
        sections += representation_sections(representation.get(name, {}))
    sections += [s for s in (chosen, earlier) if s is not None]
    sections.append(Section("Settings", [Code(settings_yaml), Text(footer, note=True)]))
    title = f"Study “{study_name}”"
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    write_text(paths["html"], render_html(title, sections))
    write_text(paths["markdown"], render_markdown(title, sections))
    for p in write_csv_tables(analysis, out):
        paths[p.stem] = p
    return paths


def report_study(
    study_dir: str | Path, representation: bool | None = None, progress: bool = True
) -> dict[str, Path]:
    """Analyse a study folder's results (and, unless switched off, its models' representations) and
    write the report into `<study>/report/`."""
    import sslseg
    from sslseg.config import load_config, to_yaml
    from sslseg.errors import ConfigError
    from sslseg.study.analyze import analyze
    from sslseg.study.selection_analysis import selection_against_draws
    from sslseg.study.spec import StudyConfig, expand
    from sslseg.study.store import JobRow, existing_backend, read_rows, read_superseded

    folder = Path(study_dir)
    if not (folder / "study.yaml").is_file() or existing_backend(folder) is None:
        raise ConfigError(
            f"{folder}: not a study folder (no study.yaml and results store; run `sslseg study run` first)"
        )
    study = load_config(StudyConfig, folder / "study.yaml")
    study = study.model_copy(update={"output": folder})
    keys = [j.key for j in expand(study)]
    rows = [JobRow.from_row(r) for r in read_rows(folder, keys, study.store)]
    analysis = analyze(study, rows)
    write_json(folder / "report" / "analysis.json", analysis)
    rep: dict[str, dict[str, Any]] = {}
    if representation if representation is not None else study.analysis.representation:
        from sslseg.study.representation_analysis import representation_analysis

        rep = representation_analysis(study, rows, progress=progress)
        write_json(
            folder / "report" / "representation.json",
            {k: {n: v for n, v in r.items() if n != "examples_png"} for k, r in rep.items()},
        )
    done = [r for r in rows if r.status == "done"]
    seconds = sum(r.total_seconds for r in done)
    footer = f"{len(done)}/{len(rows)} jobs done, {seconds / 60:.1f} min of compute in total; sslseg {sslseg.__version__}."
    earlier = earlier_settings_section(rows, read_superseded(folder, study.store))
    chosen = selection_section(selection_against_draws(study, rows, study.analysis.confidence))
    return write_report(folder / "report", study.name, analysis, rep, to_yaml(study), footer, earlier, chosen)
