"""``report.py ablation``: one row per run with the settings that differ from a base run
(from each config.yaml), what it reached and how long it took; Markdown or LaTeX."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.errors import UserError
from kit.finished_runs import KIND_NAMES, NotTrainedYet, Run
from kit.report.common import check_out
from kit.report.scalars import read_scalars, run_status, test_accuracy, training_seconds
from kit.runs import atomic_write_text

# Settings that name a run rather than change it: left out of the ablation's differences.
NOT_SETTINGS = ("exp_name",)


def _fmt_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def config_changes(base: dict, other: dict) -> list[tuple[str, str, str]]:
    """[(key, base value, run value)] for every setting that differs, sorted by key."""
    keys = sorted((set(base) | set(other)) - set(NOT_SETTINGS))
    return [
        (k, _fmt_value(base.get(k)), _fmt_value(other.get(k)))
        for k in keys
        if base.get(k) != other.get(k)
    ]


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class AblationRow:
    name: str
    changes: list[tuple[str, str, str]]
    is_base: bool
    best_val_acc: float | None  # None: no finished epoch yet
    best_epoch: int | None
    test_acc: float | None
    synthetic: bool
    seconds: float | None
    status: str


def ablation_rows(runs: list[Run], base: Run) -> list[AblationRow]:
    """The table's rows: the base run first, then the others in the order given."""
    rows = []
    ordered = [base] + [r for r in runs if r.path.resolve() != base.path.resolve()]
    for run in ordered:
        if run.kind != base.kind:
            raise UserError(
                f"{run.path} is {KIND_NAMES[run.kind]} but the base {base.path} is "
                f"{KIND_NAMES[base.kind]}; an ablation compares runs of one demo"
            )
        changes = config_changes(base.config, run.config)
        try:
            scalars = read_scalars(run)
        except NotTrainedYet:  # a row all the same: the table shows where every run stands
            total = run.config.get("epochs", "?")
            rows.append(
                AblationRow(run.name, changes, run is base, None, None, None, run.synthetic,
                            None, f"in progress (0/{total} epochs)")
            )  # fmt: skip
            continue
        val = scalars["val_acc"]
        best = max(range(len(val)), key=lambda k: (val[k][1], -k))  # the first best epoch
        rows.append(
            AblationRow(
                name=run.name,
                changes=changes,
                is_base=run is base,
                best_val_acc=val[best][1],
                best_epoch=val[best][0],
                test_acc=test_accuracy(run, scalars),
                synthetic=run.synthetic,
                seconds=training_seconds(run),
                status=run_status(run, scalars)[1],
            )
        )
    return rows


TABLE_HEADER = ("run", "changes from the base", "best val acc", "epoch", "test acc", "training time", "status")  # fmt: skip


def _row_cells(row: AblationRow, arrow: str) -> list[str]:
    changes = (
        "(base)" if row.is_base else "; ".join(f"{k} {a} {arrow} {b}" for k, a, b in row.changes)
    )
    test = "-" if row.test_acc is None else f"{row.test_acc:.4f}"
    if row.test_acc is not None and row.synthetic:
        test += " (synthetic)"
    name = row.name + (" [synthetic data]" if row.synthetic else "")
    val = "-" if row.best_val_acc is None else f"{row.best_val_acc:.4f}"
    epoch = "-" if row.best_epoch is None else str(row.best_epoch)
    return [name, changes or "(same settings)", val, epoch, test, _fmt_seconds(row.seconds), row.status]  # fmt: skip


def ablation_markdown(rows: list[AblationRow]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(TABLE_HEADER), "| " + " | ".join("---" for _ in TABLE_HEADER) + " |"]
    lines += [line(_row_cells(row, "->")) for row in rows]
    if any(row.synthetic for row in rows):
        lines.append("")
        lines.append("Runs marked [synthetic data] trained on GENERATED data: not real results.")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def ablation_latex(rows: list[AblationRow]) -> str:
    """A booktabs table (\\usepackage{booktabs}); changes are arrows, e.g. lr 0.01 -> 0.001."""
    arrow = "@@ARROW@@"  # survives escaping, then becomes a math arrow
    body = [
        " & ".join(
            _latex_escape(c).replace(arrow, r"$\rightarrow$") for c in _row_cells(row, arrow)
        )
        + r" \\"
        for row in rows
    ]
    lines = [
        "% made by report.py ablation; needs \\usepackage{booktabs}",
        r"\begin{tabular}{llrrlll}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in TABLE_HEADER) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if any(row.synthetic for row in rows):
        lines.append("% runs marked [synthetic data] trained on GENERATED data: not real results")
    return "\n".join(lines) + "\n"


def write_ablation(runs: list[Run], base: Run, out: str | None, fmt: str) -> str:
    path = check_out(out, None) if out else None
    rows = ablation_rows(runs, base)
    text = ablation_latex(rows) if fmt == "latex" else ablation_markdown(rows)
    print(text, end="")
    if path is not None:
        atomic_write_text(path, text)
        print(f"wrote {path}")
    return text
