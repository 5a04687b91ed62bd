"""Markdown tables of metric means (methods x metrics), with direction arrows and bold best."""

from __future__ import annotations

import pandas as pd


def means_table(rows: pd.DataFrame, index: tuple[str, ...] = ("method", "ablation")) -> str:
    """Mean of every metric per ``index`` group as a markdown table; best per column in bold."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return "_no finished metric rows_"
    table = ok.pivot_table(index=list(index), columns="metric", values="value", aggfunc="mean")
    direction = ok.groupby("metric")["higher_is_better"].first()
    cols = [c for c in table.columns if c != "nfe"] + (["nfe"] if "nfe" in table.columns else [])
    table = table[cols]
    shown = pd.DataFrame(index=table.index)
    for col in cols:
        higher = bool(direction[col])
        best = table[col].max() if higher else table[col].min()
        arrow = "↑" if higher else "↓"
        fmt = (lambda v: f"{v:.0f}") if col == "nfe" else (lambda v: f"{v:.4f}")
        shown[f"{col} {arrow}"] = [
            ("—" if pd.isna(v) else (f"**{fmt(v)}**" if len(table) > 1 and v == best else fmt(v)))
            for v in table[col]]
    missing = rows[rows["status"] != "ok"].drop_duplicates("metric")
    text = shown.reset_index().to_markdown(index=False)
    for _, r in missing.iterrows():
        text += f"\n\n_{r['metric']}: missing — {r['note']}_"
    return text
