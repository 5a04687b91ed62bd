"""matplotlib figures of the paper's curves, from tidy rows: training curves (a role's metric vs
distillation step, one line per ablation), LoRA scaling (metric vs number of effects, one line
per method) and deployment cost vs number of effects. Each function writes one PNG and returns
its path, or None when the rows hold nothing to plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from reports import paper_numbers as paper  # noqa: E402
from reports import stats  # noqa: E402
from reports.tables import (  # noqa: E402
    DEPLOY_METHOD,
    deployment_agg,
    human_count,
    label,
    method_order,
    metric_columns,
    training_cost,
)

# The paper's rows, each adding one component: (1) vanilla multi-teacher DMD ... (5) full.
ABLATION_NAMES = {"aop,pdsr,tafm,ts": "(1) vanilla DMD", "aop,tafm,ts": "(2) +PDSR", "tafm,ts": "(3) +AOP",
                  "ts": "(4) +TA-FM", "none": "(5) +TS (full)"}


DEPLOY_COLORS = {"base": "tab:blue", "baseline": "tab:orange", "ours": "tab:green",
                 "ours_hotswap": "tab:olive"}  # same in every panel
LINE_MARKERS = ("o", "s", "^", "D", "v", "P")
LINE_STYLES = ("-", "--", "-.", ":", "-", "--")


def _role_column(rows: pd.DataFrame, role: str):
    cols = [c for c in metric_columns(rows, paper_roles=False) if c.role == role and c.metric]
    return cols[0] if cols else None


def _effects_axis(ax, ns) -> None:
    """Number-of-effects axis: log-scaled when it spans a wide range (10 ... 180), ticks at the Ns."""
    ns = sorted(int(n) for n in ns)
    if ns and ns[-1] >= 5 * max(ns[0], 1):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("number of effects")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _means_with_intervals(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of ``by``: the mean and its 95 % cluster-bootstrap interval over test sources
    (columns value, lo, hi, n), the same interval the tables print."""
    out = []
    for key, group in rows.groupby(by):
        ci = stats.bootstrap_ci(stats.cluster_means(group))
        out.append({**dict(zip(by, key)), "value": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n})
    return pd.DataFrame(out, columns=[*by, "value", "lo", "hi", "n"])


def _band(ax, x, m: pd.DataFrame, line) -> None:  # noqa: ANN001
    ax.fill_between(x, m.lo, m.hi, color=line.get_color(), alpha=0.12, linewidth=0)


def training_curves(rows: pd.DataFrame, role: str, path: Path) -> Path | None:
    """``role``'s metric vs distillation step, one line per ablation, its 95 % interval shaded.
    ``rows`` carry a ``step`` column."""
    c = _role_column(rows, role)
    if c is None or "step" not in rows.columns:
        return None
    ok = rows[(rows.status == "ok") & (rows.metric == c.metric)]
    means = _means_with_intervals(ok, ["ablation", "step"])
    if means.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    rows_in_order = sorted(means.ablation.unique(), key=lambda a: ABLATION_NAMES.get(a, a))
    for k, ab in enumerate(rows_in_order):
        m = means[means.ablation == ab].sort_values("step")
        # own marker and dash per row, earlier rows drawn larger: rows that coincide (e.g. a
        # component that changes nothing at this scale) stay visible instead of hiding each other
        (line,) = ax.plot(m.step, m.value, marker=LINE_MARKERS[k % len(LINE_MARKERS)], markersize=9 - k,
                          linestyle=LINE_STYLES[k % len(LINE_STYLES)], label=ABLATION_NAMES.get(ab, f"off: {ab}"))
        _band(ax, m.step, m, line)
    ax.set_xlabel("distillation step (critic updates)")
    ax.set_xticks(sorted(means.step.unique()))
    ax.set_ylabel(f"{c.metric} {c.arrow}")
    ax.set_title(f"{role}-role metric vs step ({c.metric}; shaded: 95 % interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def scaling_curves(rows: pd.DataFrame, role: str, path: Path, *, with_paper: bool = True) -> Path | None:
    """``role``'s metric vs number of effects, one line per method; the paper's CLIP on a twin axis."""
    c = _role_column(rows, role)
    if c is None:
        return None
    ok = rows[(rows.status == "ok") & (rows.metric == c.metric)]
    means = _means_with_intervals(ok, ["method", "n_effects"])
    if means.empty:
        return None
    panels = 2 if with_paper and role == "CLIP" else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    for m in method_order(means.method.unique()):
        sub = means[means.method == m].sort_values("n_effects")
        (line,) = ax.plot(sub.n_effects, sub.value, marker="o", label=label(m))
        _band(ax, sub.n_effects, sub, line)
    _effects_axis(ax, means.n_effects.unique())
    ax.set_ylabel(f"{c.metric} {c.arrow}")
    ax.set_title(f"this run: {role}-role ({c.metric}; shaded: 95 % interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0, 1]
        for m, vals in paper.SCALING.items():
            ax.plot(list(vals), list(vals.values()), marker="s", linestyle="--", label=label(m))
        _effects_axis(ax, paper.SCALING_N)
        ax.set_ylabel("CLIP ↑")
        ax.set_title("paper (reported)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def quality_vs_cost(rows: pd.DataFrame, role: str, path: Path, curve_rows: pd.DataFrame | None = None) -> Path | None:
    """``role``'s metric (mean and 95 % interval over test sources) against each method's counted
    training passes (its artifacts but the shared base; reports.tables.training_cost), one point
    per method that trains something and whose artifacts were all counted. ``curve_rows`` (rows
    with a ``step`` column: the training curves' cells) add full ``ours``'s shorter runs as a line,
    each point at the passes its snapshot counted."""
    c = _role_column(rows, role)
    costs = training_cost(rows, "method")
    if c is None or costs.empty:
        return None
    ok = rows[(rows.status == "ok") & (rows.metric == c.metric)]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    drawn = 0

    def counted(costs: pd.DataFrame, key) -> bool:
        return key in costs.index and not costs.loc[key, "uncounted"] and costs.loc[key, "passes"] > 0

    for k, m in enumerate(method_order(ok.method.unique())):
        if not counted(costs, m):
            continue
        ci = stats.bootstrap_ci(stats.cluster_means(ok[ok.method == m]))
        x = costs.loc[m, "passes"]
        ax.errorbar([x], [ci.mean], yerr=[[ci.mean - ci.lo], [ci.hi - ci.mean]], marker=LINE_MARKERS[k % 6],
                    capsize=3, linestyle="none", label=f"{label(m)} (n={ci.n})")
        drawn += 1
    if curve_rows is not None and "step" in curve_rows.columns and len(curve_rows):
        full = curve_rows[(curve_rows.method == "ours") & (curve_rows.ablation.fillna("none") == "none")]
        steps = training_cost(full, "step")
        points = [(steps.loc[s, "passes"], stats.bootstrap_ci(stats.cluster_means(
            full[(full.status == "ok") & (full.metric == c.metric) & (full.step == s)]))) for s in
            sorted(full.step.dropna().unique()) if counted(steps, s)]
        if len(points) > 1:
            xs, cis = zip(*sorted(points, key=lambda p: p[0]))
            ax.errorbar(xs, [ci.mean for ci in cis], yerr=[[ci.mean - ci.lo for ci in cis],
                                                           [ci.hi - ci.mean for ci in cis]],
                        marker=".", capsize=2, linestyle=":", color="grey", label=f"{label('ours')}, shorter runs")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, hi / 10), max(hi, lo * 10))  # at least a decade: readable ticks, honest spacing
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: human_count(v)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training passes (counted; the shared base left out)")
    ax.set_ylabel(f"{c.metric} {c.arrow}")
    ax.set_title(f"{role}-role metric vs training cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def deployment_curves(rows: pd.DataFrame, path: Path, router: str = "embedding") -> Path | None:
    """Storage, routing latency, routing accuracy and end-to-end latency vs number of effects."""
    if rows.empty:
        return None
    ok = rows[rows.status == "ok"].copy()
    ok["router"] = ok["router"].fillna("") if "router" in ok.columns else ""
    panels = [("storage_bytes", "", "adapter storage (MB)", 1e-6),
              ("routing_latency_s", router, f"routing latency (ms, {router})", 1e3),
              ("routing_accuracy", router, f"routing accuracy ({router})", 100.0),
              ("e2e_latency_s", "", "end-to-end per image (ms)", 1e3)]
    panels = [p for p in panels if not ok[(ok.metric == p[0]) & (ok.router == p[1])].empty]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (metric, r, title, scale) in zip(axes[0], panels):
        sub = ok[(ok.metric == metric) & (ok.router == r)]
        means = sub.groupby(["method", "n_effects"])["value"].agg(deployment_agg(metric)).reset_index()
        for m in DEPLOY_COLORS:
            s = means[means.method == m].sort_values("n_effects")
            if len(s):
                ax.plot(s.n_effects, s.value * scale, marker="o", color=DEPLOY_COLORS[m],
                        label=DEPLOY_METHOD.get(m, m).split(" (")[0])
        ax.set_title(title, fontsize=9)
        _effects_axis(ax, sub.n_effects.unique())
        ax.grid(alpha=0.3)
        if metric == "storage_bytes":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(fig, path)
