"""compare.py's table: one line per measurement, a column per tool, ratio, the issue's target.

Every line reads one number (or a fraction of restore targets) from each run of a row, prints
the median with [min-max] when there were several runs, and evaluates the target from issue 10
(daemon), 12 (many databases) or 13 (restore) on the medians.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

Agg = dict  # {"med": float, "min": float, "max": float, "n": int} or {"num": int, "den": int}


@dataclass
class Line:
    row: str
    label: str
    get: Callable[[dict], float | None]
    digits: int = 1
    frac: bool = False  # get returns (num, den): shown summed over runs
    target: Callable[[dict, dict], tuple[str, bool | None]] | None = None
    only: str | None = None  # read from this tool's runs only (e.g. "none": the no-replicator baseline)
    ratio: bool = True  # False where walrewind/Litestream means nothing (drifts around zero)


def _v(agg: Agg | None) -> float:
    if not agg:
        return math.nan
    if "num" in agg:
        return agg["num"] / agg["den"] if agg["den"] else math.nan
    return agg["med"]


def le(limit: float, unit: str = "") -> Callable[[dict, dict], tuple[str, bool | None]]:
    return lambda a, _all: (f"<= {limit:g}{unit}", _ok(_v(a.get("walrewind")) <= limit, a.get("walrewind")))


def rel(factor: float, plus: float = 0.0, unit: str = "s") -> Callable[[dict, dict], tuple[str, bool | None]]:
    """walrewind <= factor x Litestream's (+ plus), from the same run's medians."""

    def f(a: dict, _all: dict) -> tuple[str, bool | None]:
        ls = _v(a.get("litestream"))
        text = f"<= {factor:g}x LS" + (f" + {plus:g}{unit}" if plus else "")
        if math.isnan(ls):
            return text + " (no LS)", None
        limit = factor * ls + plus
        return f"{text} = {limit:.2f}", _ok(_v(a.get("walrewind")) <= limit, a.get("walrewind"))

    return f


def all_exact(min_share: float = 1.0) -> Callable[[dict, dict], tuple[str, bool | None]]:
    def f(a: dict, _all: dict) -> tuple[str, bool | None]:
        wr = a.get("walrewind")
        text = "all" if min_share >= 1 else f">= {min_share * 6:.0f}/6"
        return text, _ok(_v(wr) >= min_share - 1e-9, wr)

    return f


def _ok(cond: bool, agg: Agg | None) -> bool | None:
    if not agg or math.isnan(_v(agg)):
        return None
    return bool(cond)


def aggregate(line: Line, runs: list[dict]) -> Agg | None:
    vals = []
    for r in runs:
        try:
            v = line.get(r)
        except (KeyError, TypeError, IndexError):
            v = None
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    if line.frac:
        return {"num": sum(v[0] for v in vals), "den": sum(v[1] for v in vals), "n": len(vals)}
    vals = [float(v) for v in vals if not math.isnan(float(v))]
    if not vals:
        return None
    return {"med": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "runs": vals}


def show(agg: Agg | None, digits: int) -> str:
    if not agg:
        return "-"
    if "num" in agg:
        return f"{agg['num']}/{agg['den']}"
    text = f"{agg['med']:.{digits}f}"
    if agg["n"] > 1:
        text += f" [{agg['min']:.{digits}f}-{agg['max']:.{digits}f}]"
    return text


def render(lines: list[Line], results: dict, tools: list[str]) -> tuple[str, list[dict]]:
    """(the table as text, the same as data for --json)."""
    header = ["measurement"] + tools + (["wr/LS"] if {"walrewind", "litestream"} <= set(tools) else []) + ["target", ""]
    rows, data = [], []
    for line in lines:
        per_tool = results.get(line.row)
        if not per_tool:
            continue
        aggs = {}
        for t in tools:
            src = line.only or t
            if line.only and t != tools[0]:
                continue
            aggs[t] = aggregate(line, per_tool.get(src, []))
        if not any(aggs.values()):
            continue
        cells = [line.label] + [show(aggs.get(t), line.digits) if t in aggs else "" for t in tools]
        if "wr/LS" in header:
            wr, ls = _v(aggs.get("walrewind")), _v(aggs.get("litestream"))
            cells.append(f"{wr / ls:.2f}" if line.ratio and not line.only and not line.frac and ls and not math.isnan(wr / ls) else "-")
        text, ok = line.target(aggs, results) if line.target else ("", None)
        cells += [text, {True: "ok", False: "MISS", None: ""}[ok]]
        rows.append(cells)
        data.append({"row": line.row, "measurement": line.label, "values": aggs, "target": text, "meets": ok})
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = ["  ".join(str(h).ljust(widths[i]) if i in (0, len(header) - 2) else str(h).rjust(widths[i])
                     for i, h in enumerate(header)),
           "  ".join("-" * w for w in widths)]
    last_row = None
    for cells, d in zip(rows, data):
        if last_row is not None and d["row"] != last_row:
            out.append("")
        last_row = d["row"]
        out.append("  ".join(str(c).ljust(widths[i]) if i in (0, len(header) - 2) else str(c).rjust(widths[i])
                             for i, c in enumerate(cells)))
    return "\n".join(out), data
