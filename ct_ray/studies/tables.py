"""The tables of a study (plain Python): the console table, the Markdown table and the flat metrics of its rows."""
from __future__ import annotations

from ct_ray.studies.design import slug
from ct_ray.studies.paired_stats import Difference, Row


def _pm(value: tuple[float, float], seeds: int, digits: int = 1) -> str:
    return f"{value[0]:.{digits}f}" if seeds == 1 else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _delta(delta: Difference | None) -> str:
    return "-" if delta is None else f"{delta.mean:+.1f} [{delta.low:+.1f}, {delta.high:+.1f}]"


def table_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; the last column is the paired AUC difference to the first arm with its 95% interval."""
    reference = rows[1].label if len(rows) > 1 else "the first arm"
    header = ["tracker", "blocks", "seeds", "AUC", "precision", "norm. precision", "FPS", "speed-up", "FLOPs ratio",
              "AUC retention %", f"AUC vs {reference} [95% CI]"]
    runtime = next((r.deployed_runtime for r in rows if r.deployed_runtime), None)
    if runtime:  # the deployed runtime's columns (evaluation.deploy_runtime), beside PyTorch's AUC and FPS
        header += [f"AUC ({runtime})", f"FPS ({runtime})"]
    body = []
    for r in rows:
        n = len(r.seeds)
        cells = [r.label, str(r.depth), str(n), _pm(r.auc, n), _pm(r.precision, n), _pm(r.norm_precision, n),
                 f"{r.fps:.0f}", "-" if r.speed_up is None else f"{r.speed_up:.2f}x",
                 "-" if r.flops_ratio is None else f"{r.flops_ratio:.2f}x",
                 "-" if r.retention is None else _pm(r.retention, n), _delta(r.delta)]
        if runtime:
            cells += ["-" if r.deployed_auc is None else _pm(r.deployed_auc, n),
                      "-" if r.deployed_fps is None else f"{r.deployed_fps:.0f}"]
        body.append(cells)
    return header, body


def format_table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    header, body = table_cells(rows)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[Row], notes: list[str] = ()) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def gap_note(gap: Difference | None, label: str = "student only", scored_on: str = "test") -> str | None:
    """The line under the table that names the gap compression has to keep (``scored_on``: which sequences)."""
    if gap is None:
        return None
    return (f"teacher - {label} (same student budget): {gap.mean:+.1f} AUC [{gap.low:+.1f}, {gap.high:+.1f}] over "
            f"{gap.sequences} {scored_on} sequences: the accuracy that compression has to keep")


def train_gap_note(train_auc: float | None, test_auc: float, sequences: int, scored_on: str = "test") -> str | None:
    """The line under the table with the teacher's AUC on its training sequences beside the scored ones."""
    if train_auc is None:
        return None
    return (f"teacher on {sequences} of its training sequences: AUC {train_auc:.1f}, on the {scored_on} sequences "
            f"{test_auc:.1f} (train - {scored_on} {train_auc - test_auc:+.1f})")


def row_metrics(rows: list[Row]) -> dict[str, float]:
    """The rows as flat MLflow metrics of the study run: ``<arm>_auc``, ``_fps``, ``_auc_retention``, ``_auc_delta``."""
    metrics = {}
    for row in rows:
        name = slug(row.label.split(" (")[0])
        metrics[f"{name}_auc"] = row.auc[0]
        metrics[f"{name}_fps"] = row.fps
        if row.retention is not None:
            metrics[f"{name}_auc_retention"] = row.retention[0]
        if row.delta is not None:
            metrics[f"{name}_auc_delta"] = row.delta.mean
        if row.deployed_auc is not None:
            runtime = row.deployed_runtime.replace("-", "_")
            metrics[f"{name}_{runtime}_auc"] = row.deployed_auc[0]
            metrics[f"{name}_{runtime}_fps"] = row.deployed_fps
    return metrics


