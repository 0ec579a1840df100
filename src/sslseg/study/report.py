"""The study report: one self-contained HTML page (figures embedded), a Markdown summary and CSV tables.

The verdict comes first; then, per dataset, the score curves, the significance table, gains and labels saved,
compute cost, the representation analysis and example predictions.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sslseg.atomic import write_json, write_text  # noqa: E402
from sslseg.study.analyze import PAIRED_MEANING, count_text, format_p  # noqa: E402
from sslseg.study.spec import BASELINE  # noqa: E402


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def png_base64(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _colours(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: ("black" if n == BASELINE else cmap(i % 10)) for i, n in enumerate(names)}


def curve_axis(group: dict[str, Any]) -> tuple[list[float], list[str], str]:
    """The curves' x values, tick labels and axis title for one analysed group.

    An image-count study plots the annotated images of each budget, validation included (mean over seeds of
    the cells' n_labelled_total); a fraction study keeps the fraction and names the images under it."""
    budgets, annotated = group["budgets"], group["annotated"]
    known = all(n is not None for n in annotated)
    if group["budget_key"] == "labelled_images":
        if known:
            return annotated, [count_text(n) for n in annotated], "annotated images (training + validation)"
        return budgets, [str(int(b)) for b in budgets], "labelled images (validation count not recorded)"
    ticks = [
        f"{f:.0%}" + (f"\n{count_text(n)} img" if n is not None else "")
        for f, n in zip(budgets, annotated, strict=True)
    ]
    return budgets, ticks, "labelled fraction of the training images"


def budget_label(group: dict[str, Any], j: int) -> str:
    """Budget j for a table header, with the annotated images (training + validation) where recorded:
    "10% (7 images)", "8 images", "74 images (8 + validation)"."""
    b, n = group["budgets"][j], group["annotated"][j]
    if group["budget_key"] == "label_fraction":
        return f"{b:.0%}" + (f" ({count_text(n)} images)" if n is not None else "")
    if n is None:
        return f"{int(b)} labelled"
    return f"{count_text(n)} images" if n == b else f"{count_text(n)} images ({int(b)} + validation)"


def curves_figure(ds: dict[str, Any], metric: str) -> str:
    """Score vs labelled budget, mean and confidence band over seeds, one panel per encoder state."""
    states = list(ds["groups"])
    fig, axes = plt.subplots(1, len(states), figsize=(5.2 * len(states), 3.8), squeeze=False)
    for ax, state in zip(axes[0], states, strict=True):
        g = ds["groups"][state][metric]
        colours = _colours(list(g["pretrainings"]))
        xs, ticks, title = curve_axis(g)
        x = np.array(xs, dtype=float)
        for name, e in g["pretrainings"].items():
            mean = np.array([np.nan if v is None else v for v in e["mean"]], dtype=float)
            lo = np.array([np.nan if v is None else v for v in e["ci_low"]], dtype=float)
            hi = np.array([np.nan if v is None else v for v in e["ci_high"]], dtype=float)
            style = "--" if name == BASELINE else "-"
            ax.plot(x, mean, style, marker="o", color=colours[name], label=name)
            # scores live in [0, 1]: a band from two seeds can reach far past that
            ax.fill_between(x, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=colours[name], alpha=0.12)
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


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _p(t: dict[str, Any], key: str) -> str:
    return format_p(t[key]) if t.get(key) is not None else "–"


def _interval(ci: Any, spec: str = "+.3f") -> str:
    ci = ci or [None, None]
    if all(v is None or not math.isfinite(v) for v in ci):
        return "–"
    return f"{_fmt(ci[0], spec)} – {_fmt(ci[1], spec)}"


def significance_rows(group: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
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
    for name, e in group["pretrainings"].items():
        t = e.get("test", {})
        base = name == BASELINE
        rows.append(
            [
                name,
                _fmt(e["integral_mean"]),
                _interval(e["integral_ci"], ".3f"),
                "baseline"
                if base
                else f"{_fmt(t.get('difference_mean'), '+.3f')} ({_interval(t.get('difference_ci'))})",
                "" if base else _p(t, "paired_t_p_holm"),
                "" if base else _p(t, "wilcoxon_p_holm"),
                "" if base else _p(t, "welch_p_holm"),
                "" if base else ("yes" if t.get("significant") else "no"),
                _fmt(e["cost"]["factor"], ".2f"),
                _fmt(e["cost"]["pretrain_seconds"], ".0f"),
            ]
        )
    return header, rows


def budget_rows(group: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per label budget, each pretraining's paired difference with random init and its Holm p-value."""
    header = ["pretraining"] + [
        f"{budget_label(group, j)}: paired Δ (95% CI), p" for j in range(len(group["budgets"]))
    ]
    rows = []
    for name, e in group["pretrainings"].items():
        if name == BASELINE or not e.get("budget_tests"):
            continue
        cells = [
            f"{_fmt(b['difference_mean'], '+.3f')} ({_interval(b['difference_ci'])}), {_p(b, 'paired_t_p_holm')}"
            for b in e["budget_tests"]
        ]
        rows.append([name, *cells])
    return header, rows


def gain_rows(group: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per budget, each pretraining's relative gain and share of labels saved; where labels are counted in
    annotated images, also the images random init needs for the same score."""
    header = ["pretraining"] + [
        f"{budget_label(group, j)}: gain / labels saved" for j in range(len(group["budgets"]))
    ]
    rows = []
    for name, e in group["pretrainings"].items():
        if name == BASELINE:
            continue
        cells = []
        for g, s, n in zip(e["relative_gain"], e["labels_saved"], e["random_needs"], strict=True):
            cell = f"{_fmt(g, '+.1%')} / {_fmt(s, '.0%') if s is not None else '> range'}"
            if group["labels_in_images"]:
                cell += (
                    f" (random init needs {count_text(n)})" if n is not None else " (random init: > range)"
                )
            cells.append(cell)
        rows.append([name, *cells])
    return header, rows


PAIRED_COLUMNS = (
    "n_pairs",
    "difference_mean",
    "paired_t_p",
    "paired_t_p_holm",
    "wilcoxon_p",
    "wilcoxon_p_holm",
)


def write_csv_tables(analysis: dict[str, Any], out: Path) -> list[Path]:
    """curves.csv, integrals.csv and gains.csv: every number of the report, for other tools."""
    curves, integrals, gains = [], [], []
    for ds_name, ds in analysis["datasets"].items():
        for state, by_metric in ds["groups"].items():
            for metric, g in by_metric.items():
                # the budget column: "fraction" or "labelled_images", as the study's axis
                column = "fraction" if g["budget_key"] == "label_fraction" else "labelled_images"
                for name, e in g["pretrainings"].items():
                    key = {"dataset": ds_name, "state": state, "metric": metric, "pretraining": name}
                    budget = e.get("budget_tests") or [{}] * len(g["budgets"])
                    for j, b in enumerate(g["budgets"]):
                        at = {column: b}
                        curves.append(
                            key
                            | at
                            | {"mean": e["mean"][j], "ci_low": e["ci_low"][j]}
                            | {"ci_high": e["ci_high"][j], "n_seeds": e["n_seeds"][j]}
                            | {"annotated_images": g["annotated"][j]}
                        )
                        gains.append(
                            key
                            | at
                            | {"annotated_images": g["annotated"][j], "relative_gain": e["relative_gain"][j]}
                            | {"labels_saved": e["labels_saved"][j], "random_needs": e["random_needs"][j]}
                            | {"labels_counted_in": "annotated images" if g["labels_in_images"] else column}
                            | {k: budget[j].get(k) for k in PAIRED_COLUMNS}
                        )
                    t = e.get("test", {})
                    integrals.append(
                        key
                        | {"integral_mean": e["integral_mean"], "reference": g["reference"]}
                        | {k: t.get(k) for k in PAIRED_COLUMNS}
                        | {
                            "welch_p_holm": t.get("welch_p_holm"),
                            "permutation_p_holm": t.get("permutation_p_holm"),
                        }
                        | {"significant": t.get("significant"), "cost_factor": e["cost"]["factor"]}
                        | {"pretrain_seconds": e["cost"]["pretrain_seconds"]}
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


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.verdict{background:#eef6ee;border-left:4px solid #4a4;padding:0.6em 1em;margin:0.5em 0}
.note{color:#666;font-size:0.9em}
img{max-width:100%}
"""


def _representation_parts(rep: dict[str, Any]) -> tuple[list[str], list[str]]:
    """HTML and Markdown blocks of one dataset's representation analysis."""
    h: list[str] = []
    md: list[str] = []
    if rep.get("error"):
        text = f"Representation analysis could not run: {rep['error']}"
        return [f"<p class='note'>{html.escape(text)}</p>"], [f"\n{text}\n"]
    if rep.get("cka_between"):
        c = rep["cka_between"]
        h.append("<h3>Representation similarity (linear CKA)</h3>")
        h.append(
            f'<p class="note">{html.escape(c["what"])}</p>'
            f'<img src="data:image/png;base64,{heatmap_figure(c["matrix"], c["labels"], "linear CKA")}">'
        )
        md.append(f"\n### Representation similarity (linear CKA)\n\n{c['what']}\n")
        md.append(
            _table_md(
                ["", *c["labels"]],
                [
                    [a, *[_fmt(v, ".2f") for v in row]]
                    for a, row in zip(c["labels"], c["matrix"], strict=True)
                ],
            )
        )
    if rep.get("cka_finetuning"):
        c = rep["cka_finetuning"]
        header = ["pretraining", *[f"stage {i + 1}" for i in range(len(next(iter(c["per_stage"].values()))))]]
        rows = [[n, *[_fmt(v, ".2f") for v in vals]] for n, vals in c["per_stage"].items()]
        h.append(f'<p class="note">{html.escape(c["what"])}</p>' + _table_html(header, rows))
        md.append(f"\n{c['what']}\n\n" + _table_md(header, rows))
    if rep.get("retrieval"):
        r = rep["retrieval"]
        header = ["pretraining", "Ω pretrained encoder", "Ω fine-tuned encoder"]
        rows = [[n, _fmt(v.get("pretrained")), _fmt(v.get("finetuned"))] for n, v in r["omega"].items()]
        text = (
            f"Nearest-neighbour retrieval (Ω): the share of {r['n_images']} held-out images whose nearest "
            f"neighbour in PCA-reduced encoder space has the same {r['class_name']}; chance is {r['chance']:.3f}."
        )
        h.append(
            f"<h3>Retrieval of classes never trained on</h3><p>{html.escape(text)}</p>"
            + _table_html(header, rows)
        )
        md.append("\n### Retrieval of classes never trained on\n\n" + text + "\n\n" + _table_md(header, rows))
    if rep.get("embedding_map"):
        e = rep["embedding_map"]
        h.append(f'<img src="data:image/png;base64,{scatter_figure(e, e["title"])}">')
    if rep.get("weight_change"):
        w = rep["weight_change"]
        header = ["pretraining", "encoder change", "decoder change"]
        rows = [
            [n, _fmt(v.get("encoder"), ".3f"), _fmt(v.get("decoder"), ".3f")] for n, v in w["values"].items()
        ]
        h.append(
            f"<h3>How far fine-tuning moves the weights</h3><p class='note'>{html.escape(w['what'])}</p>"
            + _table_html(header, rows)
        )
        md.append(
            "\n### How far fine-tuning moves the weights\n\n" + w["what"] + "\n\n" + _table_md(header, rows)
        )
    if rep.get("uncertainty"):
        u = rep["uncertainty"]
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
        h.append(
            f"<h3>Prediction uncertainty</h3><p class='note'>{html.escape(u['what'])}</p>"
            + _table_html(header, rows)
        )
        md.append("\n### Prediction uncertainty\n\n" + u["what"] + "\n\n" + _table_md(header, rows))
    if rep.get("examples_png"):
        h.append("<h3>Example predictions</h3>")
        h.append(f'<img src="data:image/png;base64,{rep["examples_png"]}">')
    return h, md


def write_report(
    out: Path,
    study_name: str,
    analysis: dict[str, Any],
    representation: dict[str, dict[str, Any]] | None = None,
    settings_yaml: str = "",
    footer: str = "",
) -> dict[str, Path]:
    """Write report.html, report.md and the CSV tables into `out`; returns their paths."""
    from sslseg.segmentation.tasks import task_named  # torch and the networks: only when reporting

    out.mkdir(parents=True, exist_ok=True)
    representation = representation or {}
    h = [f"<!doctype html><meta charset='utf-8'><title>sslseg study {html.escape(study_name)}</title>"]
    h.append(f"<style>{CSS}</style><h1>Study “{html.escape(study_name)}”</h1><h2>Verdict</h2>")
    md = [f"# Study “{study_name}”\n", "## Verdict\n"]
    for ds in analysis["datasets"].values():
        h.append(f"<div class='verdict'>{html.escape(ds['verdict']['text'])}</div>")
        md.append(f"- {ds['verdict']['text']}")
    h.append(f"<p class='note'>{html.escape(PAIRED_MEANING)}</p>")
    md.append(f"\n{PAIRED_MEANING}\n")
    for ds_name, ds in analysis["datasets"].items():  # what "labels used / saved" count
        text = f"{ds_name}: {ds['accounting']}"
        h.append(f"<p class='note'>{html.escape(text)}</p>")
        md.append(f"{text}\n")
    for ds_name, ds in analysis["datasets"].items():
        metric, state = ds["primary_metric"], ds["main_state"]
        ref = ds["references"][metric]
        axis_name = (
            "label fractions" if ds["budget_axis"]["budget_key"] == "label_fraction" else "image counts"
        )
        task = task_named(ds["task"]).display_name
        h.append(f"<h2>{html.escape(ds_name)} ({task})</h2>")
        md.append(f"\n## {ds_name} ({task})\n")
        h.append(f'<img src="data:image/png;base64,{curves_figure(ds, metric)}">')
        note = (
            f"Label-efficiency integral: area under the {metric} curve over the studied {axis_name}, divided "
            f"by their range and by the reference score {_fmt(ref['score'])} ({ref['source']}). Tests are one-sided "
            "(pretraining better than random init) and Holm-corrected across pretrainings; the paired t-test "
            "over seeds decides significance, the Wilcoxon signed-rank test checks it without assuming normal "
            "differences, and the unpaired Welch test shows what ignoring the pairing would give."
        )
        for st in ds["groups"]:
            g = ds["groups"][st][metric]
            header, rows = significance_rows(g)
            h.append(f"<h3>{metric}, {st} encoder</h3><p class='note'>{html.escape(note)}</p>")
            h.append(_table_html(header, rows))
            md.append(f"\n### {metric}, {st} encoder\n\n{note}\n\n" + _table_md(header, rows))
            gh, gr = gain_rows(g)
            if gr:
                h.append(
                    "<p>Relative gain over random init and the share of labels saved, per budget (point "
                    "estimates from the mean curves; the paired tests below say what the seeds support):</p>"
                )
                h.append(_table_html(gh, gr))
                md.append("\nRelative gain / labels saved per budget:\n\n" + _table_md(gh, gr))
            bh, br = budget_rows(g)
            if br:
                text = (
                    "Paired difference with random init at each label budget (same labelled images per "
                    "seed), one-sided paired t-test p after Holm correction across pretrainings:"
                )
                h.append(f"<p>{html.escape(text)}</p>" + _table_html(bh, br))
                md.append(f"\n{text}\n\n" + _table_md(bh, br))
        others = [m for m in ds["groups"][state] if m != metric]
        if others:
            header = ["pretraining", *others]
            rows = [
                [n, *[_fmt(ds["groups"][state][m]["pretrainings"][n]["integral_mean"]) for m in others]]
                for n in ds["groups"][state][metric]["pretrainings"]
            ]
            h.append(
                f"<h3>Other metrics ({state} encoder), label-efficiency integral</h3>"
                + _table_html(header, rows)
            )
            md.append(
                f"\n### Other metrics ({state} encoder), label-efficiency integral\n\n"
                + _table_md(header, rows)
            )
        rh, rmd = _representation_parts(representation.get(ds_name, {}))
        h += rh
        md += rmd
        if ds["failed"]:
            h.append(
                f"<p class='note'>Failed jobs (see the store for their errors): {html.escape(', '.join(ds['failed']))}</p>"
            )
            md.append(f"\nFailed jobs: {', '.join(ds['failed'])}")
    h.append(
        f"<h2>Settings</h2><pre>{html.escape(settings_yaml)}</pre><p class='note'>{html.escape(footer)}</p>"
    )
    md.append(f"\n---\n{footer}\n")
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    write_text(paths["html"], "\n".join(h))
    write_text(paths["markdown"], "\n".join(md) + "\n")
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
    from sslseg.study.spec import StudyConfig, expand
    from sslseg.study.store import existing_backend, read_rows

    folder = Path(study_dir)
    if not (folder / "study.yaml").is_file() or existing_backend(folder) is None:
        raise ConfigError(
            f"{folder}: not a study folder (no study.yaml and results store; run `sslseg study run` first)"
        )
    study = load_config(StudyConfig, folder / "study.yaml")
    study = study.model_copy(update={"output": folder})
    keys = [j.key for j in expand(study)]
    rows = read_rows(folder, keys, study.store)
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
    done = sum(r["status"] == "done" for r in rows)
    seconds = sum((r["seconds"] or {}).get("total", 0.0) for r in rows if r["status"] == "done")
    footer = f"{done}/{len(rows)} jobs done, {seconds / 60:.1f} min of compute in total; sslseg {sslseg.__version__}."
    return write_report(folder / "report", study.name, analysis, rep, to_yaml(study), footer)
