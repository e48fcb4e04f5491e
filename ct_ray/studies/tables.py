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
    body = []
    for r in rows:
        n = len(r.seeds)
        body.append([r.label, str(r.depth), str(n), _pm(r.auc, n), _pm(r.precision, n), _pm(r.norm_precision, n),
                     f"{r.fps:.0f}", "-" if r.speed_up is None else f"{r.speed_up:.2f}x",
                     "-" if r.flops_ratio is None else f"{r.flops_ratio:.2f}x",
                     "-" if r.retention is None else _pm(r.retention, n), _delta(r.delta)])
    return header, body


def format_table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    header, body = table_cells(rows)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


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
    return metrics


