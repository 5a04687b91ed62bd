"""Markdown tables from tidy result rows, laid out like the paper's (the only place rows are pivoted).

Columns are keyed on a metric's ``role`` (the paper column it stands for: CLIP, DreamSim, DINO,
VSA, EditReward, BCR, NFE) where set, else on the metric's name. Arrows give the direction, the
best measured value per column is bold, the paper's own numbers live in separate tables that say
so (``reports/paper_numbers.py``) and never take part in the bold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from reports import paper_numbers as paper
from reports import stats

ARROW = {True: "↑", False: "↓"}

# The metric that says whether one effect is right, by its variation kind (the rows' ``variation``;
# the world gate's and the per-effect table's "fidelity"): a texture's grain *is* the effect, so
# its texture energy; a modes or deterministic effect has a nearest allowed variant, so the error
# to it (metrics/modes.py defines both).
FIDELITY: dict[str, str] = {"texture": "texture_energy", "modes": "gt_mode_mae", "deterministic": "gt_mode_mae"}


def fidelity_metric(kind: str) -> str:
    """The fidelity metric of an effect of this variation kind (``Effect.variation_kind``)."""
    return FIDELITY.get(kind, "gt_mode_mae")


# ----------------------------------------------------------------------------------------------
# columns


@dataclass(frozen=True)
class Column:
    label: str                 # header text without the arrow ("CLIP", "CLIP (clip)", "gt_psnr")
    metric: str | None         # the metric measured in this column (None: not measured)
    role: str                  # paper role or ""
    higher: bool
    synthetic: bool = False
    missing_note: str = ""     # why a role's metric is missing, if it is
    unit: str = ""             # the metric's unit, from its rows ("" in rows of older runs)
    ideal: float | None = None  # closer to this is better (texture_energy, diversity_ratio: 1)

    @property
    def arrow(self) -> str:
        return f"→{self.ideal:g}" if self.ideal is not None else ARROW[self.higher]

    @property
    def header(self) -> str:
        """The label, and for a stand-in (a metric that is not the paper's own) the metric it
        holds with its unit: "gt_mode_psnr (dB) · CLIP role ↑"; "mode_blur (share 0-1) ↓"."""
        held = f"{self.metric} ({self.unit})" if self.unit else self.metric
        if self.metric is None or self.metric.lower() == self.label.lower().split(" (")[0]:
            return f"{held if not self.role else self.label} {self.arrow}"
        return f"{held} · {self.role} role {self.arrow}"


def _first(rows: pd.DataFrame, col: str, default):
    return rows[col].iloc[0] if col in rows.columns and len(rows) else default


COST_ROLE = "cost"      # bench/cost.py: training-cost rows, one per artifact a cell used
SHARED_KINDS = ("world", "base")  # artifacts every method of a run needs alike (left out of per-method sums)


def quality(rows: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows: everything but the training-cost rows."""
    return rows[rows["role"].fillna("") != COST_ROLE] if "role" in rows.columns else rows


def metric_columns(rows: pd.DataFrame, *, paper_roles: bool = True) -> list[Column]:
    """One column per paper role (in the paper's order; NFE last), then every metric without a role.

    A role played by one measured metric is labelled with the role; by several, ``role (metric)``
    each. With ``paper_roles`` every paper role gets a column even when unmeasured (shown as —).
    """
    rows = quality(rows)
    roles = rows["role"].fillna("") if "role" in rows.columns else pd.Series("", index=rows.index)
    cols: list[Column] = []
    for role in paper.ROLES:
        sub = rows[roles == role]
        ok = sub[sub["status"] == "ok"]
        metrics = list(dict.fromkeys(ok["metric"]))
        if len(metrics) == 1:
            m = ok[ok.metric == metrics[0]]
            higher = bool(_first(m, "higher_is_better", paper.HIGHER_IS_BETTER[role]))
            cols.append(Column(role, metrics[0], role, higher, bool(_first(m, "synthetic", False)),
                               unit=str(_first(m, "unit", "") or "")))
        elif metrics:
            for name in metrics:
                m = ok[ok.metric == name]
                cols.append(Column(f"{role} ({name})", name, role, bool(_first(m, "higher_is_better", True)),
                                   bool(_first(m, "synthetic", False)), unit=str(_first(m, "unit", "") or "")))
        elif len(sub) or paper_roles:
            note = "; ".join(dict.fromkeys(f"{r.metric}: {r.note}" for r in sub.itertuples() if r.note))
            cols.append(Column(role, None, role, paper.HIGHER_IS_BETTER[role], missing_note=note or "not measured"))
    for name in dict.fromkeys(rows.loc[roles == "", "metric"]):
        m = rows[(rows.metric == name) & (rows.status == "ok")]
        if m.empty:
            continue
        ideal = _first(m, "ideal", None)
        cols.append(Column(name, name, "", bool(_first(m, "higher_is_better", True)),
                           bool(_first(m, "synthetic", False)), unit=str(_first(m, "unit", "") or ""),
                           ideal=None if ideal is None or pd.isna(ideal) else float(ideal)))
    # NFE last, as in the paper
    return sorted(cols, key=lambda c: c.role == "NFE")


def legend(cols: Sequence[Column], descriptions: dict[str, str] | None = None) -> str:
    """One line naming the metric behind each role column (and why a column is empty)."""
    parts = []
    for c in cols:
        if c.metric is None:
            parts.append(f"{c.label}: — ({c.missing_note})")
        elif c.role and c.label == c.role and c.metric.lower() != c.role.lower():
            what = ", ".join(filter(None, ["synthetic" if c.synthetic else "", (descriptions or {}).get(c.metric, "")]))
            parts.append(f"{c.role} = `{c.metric}` ({what})" if what else f"{c.role} = `{c.metric}`")
    return ("Columns: " + "; ".join(parts) + ".") if parts else ""


# ----------------------------------------------------------------------------------------------
# numbers


def decimals(values, label: str = "") -> int:
    """Decimals for a whole column (one format per column): 3 below 10, 2 below 100, else 1."""
    if label.startswith("NFE"):
        return 0
    finite = [abs(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    top = max(finite, default=0.0)
    return 3 if top < 10 else 2 if top < 100 else 1


def fmt(value: float, label: str = "", digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    d = decimals([value], label) if digits is None else digits
    return f"{value:.{d}f}"


def column_formatter(values, label: str = "") -> Callable[[float], str]:
    d = decimals(list(values), label)
    return lambda v: fmt(v, label, d)


def column_means(rows: pd.DataFrame, by: Sequence[str], cols: Sequence[Column]) -> pd.DataFrame:
    """Mean of each column's metric per ``by`` group (ok rows only); index = groups, columns = labels."""
    ok = rows[rows["status"] == "ok"]
    out = {}
    for c in cols:
        if c.metric is None:
            continue
        sub = ok[ok.metric == c.metric]
        if not sub.empty:
            out[c.label] = sub.groupby(list(by))["value"].mean()
    table = pd.DataFrame(out)
    for c in cols:
        if c.label not in table.columns:
            table[c.label] = float("nan")
    return table[[c.label for c in cols]]


def cluster_columns(rows: pd.DataFrame, by: Sequence[str], cols: Sequence[Column]) -> dict[str, dict]:
    """Per column label, per ``by`` group: the mean of each test source (effect, sample) -- the
    unit the intervals resample (reports/stats.py)."""
    ok = rows[rows["status"] == "ok"]
    out: dict[str, dict] = {}
    for c in cols:
        groups: dict = {}
        if c.metric is not None:
            for key, sub in ok[ok.metric == c.metric].groupby(list(by) if len(by) > 1 else by[0]):
                groups[key] = stats.cluster_means(sub)
        out[c.label] = groups
    return out


def ci_column(groups: dict, keys: Sequence, col: Column) -> list[str]:
    """``mean ± half-width`` of the 95 % interval per key; the best mean in bold only when it is
    *significantly* better than every other row (paired bootstrap over shared test sources). For
    a column with an ideal value, "better" is closer to it: -|log(value / ideal)|, per source."""
    cis = {k: stats.bootstrap_ci(groups[k]) if k in groups else None for k in keys}
    means = [cis[k].mean if cis[k] is not None else float("nan") for k in keys]
    text = column_formatter(means, col.label)
    higher, judged = col.higher, groups
    if col.ideal is not None:
        higher = True
        judged = {k: -stats.log_distance(g, col.ideal) for k, g in groups.items()}
    finite = [(float(judged[k].mean()), k) for m, k in zip(means, keys) if not math.isnan(m)]
    best = None
    if len(finite) > 1:
        top = (max if higher else min)(finite, key=lambda t: t[0])[1]
        if all(stats.significantly(stats.paired_difference(judged[top], judged[k]), higher)
               for _, k in finite if k != top):
            best = top
    out = []
    for k, m in zip(keys, means):
        ci = cis[k]
        if ci is None or math.isnan(m):
            out.append("—")
            continue
        half = (ci.hi - ci.lo) / 2 if not math.isnan(ci.lo) else float("nan")
        cell = text(m) + ("" if math.isnan(half) or col.label.startswith("NFE") else f" ± {text(half)}")
        out.append(f"**{cell}**" if k == best else cell)
    return out


def ratio_columns(groups: dict, keys: Sequence, col: Column) -> dict[str, list[str]]:
    """A column's cells under its header; a "-> ideal" ratio also gets its distance from the ideal,
    ``|log(x / ideal)|`` per test source (the number its bold is judged on). The mean ratio alone
    can look right while no effect is: 1.8 on one effect and 0.25 on another average to 1."""
    out = {col.header: ci_column(groups, keys, col)}
    if col.ideal is not None:
        dist = Column(f"{col.label} log-distance", col.metric, "", higher=False)
        out[f"{col.metric} log-distance (0 = exact) ↓"] = ci_column(
            {k: stats.log_distance(g, col.ideal) for k, g in groups.items()}, keys, dist)
    return out


def training_cost(rows: pd.DataFrame, by: str | Sequence[str] = "method") -> pd.DataFrame:
    """Per ``by`` group (a column, or several: a tuple index): the training cost of every
    artifact its cells used, each artifact once
    (bench/cost.py figures are exclusive, so summing over artifacts counts nothing twice).
    Columns: ``passes`` (sample forward + backward passes through the transformer), ``cpu_s``,
    ``wall_s``, ``uncounted`` (artifacts built before costs were recorded), for everything but the
    shared base (``SHARED_KINDS``), and ``base_passes`` / ``base_cpu_s`` / ``base_uncounted`` for that."""
    cost = rows[rows["role"].fillna("") == COST_ROLE] if "role" in rows.columns else rows.iloc[:0]
    if cost.empty or "artifact" not in cost.columns:
        return pd.DataFrame()
    cost = cost[cost.metric.isin(["train_forward", "train_backward", "train_cpu_s", "train_wall_s"])]
    by = [by] if isinstance(by, str) else list(by)
    cost = cost.drop_duplicates([*by, "artifact", "metric"]).assign(
        kind=lambda d: d["artifact"].astype(str).str.split("/").str[0])
    out = {}
    for key, sub in cost.groupby(by[0] if len(by) == 1 else by):
        own, shared = _cost_sums(sub[~sub.kind.isin(SHARED_KINDS)]), _cost_sums(sub[sub.kind.isin(SHARED_KINDS)])
        out[key] = {**own, "base_passes": shared["passes"], "base_cpu_s": shared["cpu_s"],
                    "base_uncounted": shared["uncounted"]}
    return pd.DataFrame.from_dict(out, orient="index")


def _cost_sums(d: pd.DataFrame) -> dict[str, float]:
    """Passes (forward + backward), CPU and wall seconds of the counted artifacts in cost rows
    ``d`` (one row per artifact and metric), and how many artifacts were not counted."""
    ok = d[d.status == "ok"]

    def total(*metrics: str) -> float:
        return float(ok[ok.metric.isin(metrics)]["value"].sum())

    return {"passes": total("train_forward", "train_backward"), "cpu_s": total("train_cpu_s"),
            "wall_s": total("train_wall_s"), "uncounted": int(d[d.status != "ok"]["artifact"].nunique())}


def cost_table(rows: pd.DataFrame) -> str:
    """Method | one column per artifact kind (sample passes, CPU h) | total, and a last row with
    the grid's total over its distinct artifacts (a teacher shared by four methods counted once)."""
    cost = rows[rows["role"].fillna("") == COST_ROLE] if "role" in rows.columns else rows.iloc[:0]
    if cost.empty or "artifact" not in cost.columns:
        return "_no training-cost rows (cells run before costs were recorded)_"
    cost = cost.assign(kind=cost["artifact"].astype(str).str.split("/").str[0])
    order = ["world", "base", "teachers", "teacher_outputs", "lightning", "fm_all_in_1", "collectionlora"]
    kinds = sorted(dict.fromkeys(cost["kind"]), key=lambda k: (order.index(k) if k in order else len(order), k))

    def cell(d: pd.DataFrame) -> str:
        d = d.drop_duplicates(["artifact", "metric"])
        if d.empty:
            return ""
        sums = _cost_sums(d)
        return cost_text(sums["passes"], sums["cpu_s"], sums["uncounted"], counted=(d.status == "ok").any())

    lines = []
    for method in method_order(list(dict.fromkeys(cost["method"]))):
        sub = cost[cost.method == method]
        lines.append([label(method)] + [cell(sub[sub.kind == k]) for k in kinds] + [cell(sub)])
    lines.append(["**all rows, each artifact once**"] + [cell(cost[cost.kind == k]) for k in kinds] + [cell(cost)])
    frame = pd.DataFrame(lines, columns=["Method"] + kinds + ["total"])
    return render(frame) + ("\n\nEach cell: sample forward + backward passes through the transformer · CPU hours, "
                            "counted while the artifact was built (exclusive of the artifacts it needed).")


def cost_line(rows: pd.DataFrame) -> str:
    """One line after a run: the training cost of what it used, the shared base apart ("" if none)."""
    costs = training_cost(rows, "method")
    if costs.empty:
        return ""
    r = costs.iloc[0]
    uncounted = f", {int(r['uncounted'])} artifact(s) built before costs were counted" if r["uncounted"] else ""
    base = "built before costs were counted" if r["base_uncounted"] else f"{human_count(r['base_passes'])} passes"
    return (f"training cost: {human_count(r['passes'])} transformer passes, {r['cpu_s'] / 3600:.2f} CPU h "
            f"(base: {base}){uncounted} -- per artifact in the rows (role 'cost')")


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def cost_text(passes: float, cpu_s: float, uncounted: int = 0, *, counted: bool = True) -> str:
    """One training-cost cell: "66.6 k · 0.35 h", "—" when nothing in it was counted, and how
    many of its artifacts were built before costs were counted."""
    text = f"{human_count(passes)} · {cpu_s / 3600:.2f} h" if counted else "—"
    return text + (f" (+{uncounted} uncounted)" if uncounted else "")


def _row_cost(costs: pd.DataFrame, key) -> str:
    """``cost_text`` of one row of ``training_cost`` ("—" where it has none)."""
    if costs.empty or key not in costs.index:
        return "—"
    r = costs.loc[key]
    return cost_text(r["passes"], r["cpu_s"], int(r["uncounted"]), counted=not r["uncounted"] or r["cpu_s"] > 0)


def cost_cells(costs: pd.DataFrame, keys: Sequence) -> dict[str, list[str]]:
    """The main / ablation table's training-cost columns for ``keys`` ("—" where not counted)."""
    def cell(k, col: str, text: Callable[[float], str]) -> str:
        if costs.empty or k not in costs.index:
            return "—"
        r = costs.loc[k]
        return text(r[col]) + (f" (+{int(r['uncounted'])} uncounted)" if r["uncounted"] else "")

    return {"training passes ↓": [cell(k, "passes", human_count) for k in keys],
            "training CPU h ↓": [cell(k, "cpu_s", lambda v: f"{v / 3600:.2f}") for k in keys]}


COST_NOTE = ("Training cost: counted while each artifact was built (bench/cost.py) -- sample forward + backward "
             "passes through the transformer and CPU hours -- summed over everything the row needed (teachers, "
             "their outputs, Lightning, the student), each artifact once; the base's pretraining, shared by "
             "every row, is left out.")


def n_sources(groups: dict, keys: Sequence) -> list[str]:
    """Test sources behind each row (the largest over its columns)."""
    return [str(max((len(g[k]) for g in groups.values() if k in g), default=0)) for k in keys]


SIGNIFICANCE_NOTE = ("Each cell: mean ± half-width of its 95 % cluster-bootstrap interval over test sources "
                     "(n per row); bold only where a row is significantly best (paired bootstrap against every "
                     "other row).")


def bold_best(values: pd.Series, higher: bool, text: Callable[[float], str]) -> list[str]:
    """Format a column; the best value (ties included) in bold when more than one row has a value."""
    finite = values.dropna()
    best = (finite.max() if higher else finite.min()) if len(finite) else None
    if len(finite) and math.isclose(finite.max(), finite.min(), rel_tol=1e-9, abs_tol=1e-12):
        best = None  # all tied: nothing stands out
    out = []
    for v in values:
        s = text(v)
        out.append(f"**{s}**" if best is not None and len(finite) > 1 and not pd.isna(v)
                   and math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12) else s)
    return out


def render(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


# ----------------------------------------------------------------------------------------------
# legacy quick table (bench.run prints it after every run)


def means_table(rows: pd.DataFrame, index: tuple[str, ...] = ("method", "ablation")) -> str:
    """Mean of every metric per ``index`` group as a markdown table; best per column in bold."""
    rows = quality(rows)
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
        fmt_ = (lambda v: f"{v:.0f}") if col == "nfe" else (lambda v: f"{v:.4f}")
        shown[f"{col} {arrow}"] = [
            ("—" if pd.isna(v) else (f"**{fmt_(v)}**" if len(table) > 1 and v == best else fmt_(v)))
            for v in table[col]]
    # "n/a": not defined for that effect (coverage of a texture) -- not a missing measurement
    missing = rows[~rows["status"].isin(["ok", "n/a"])].drop_duplicates("metric")
    text = shown.reset_index().to_markdown(index=False)
    if len(missing):
        text += "\n\n" + missing_summary(missing)
    return text


def missing_summary(missing: pd.DataFrame) -> str:
    """One short line per missing metric (what is missing, the setting that provides it); the
    full reasons stay in the rows' ``note`` and the report."""
    import re

    lines = ["| missing metric | what is missing | provide it with |", "|---|---|---|"]
    for _, r in missing.iterrows():
        note = str(r["note"])
        what = re.split(r" \(looked in| in /|: set |; |\. To provide", note)[0].strip()
        setting = re.search(r"BENCH_[A-Z_]+", note)
        lines.append(f"| {r['metric']} | {what[:90]} | {'`' + setting.group(0) + '`' if setting else '—'} |")
    return "\n".join(lines) + ("\n\n_Full reasons: the rows' `note` column and the report "
                                "(`python -m bench.report RUN_DIR`)._")


# ----------------------------------------------------------------------------------------------
# the paper's tables, measured


def method_order(methods: Sequence[str]) -> list[str]:
    known = list(paper.METHOD_LABELS)
    return sorted(dict.fromkeys(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


def label(method: str) -> str:
    return paper.METHOD_LABELS.get(method, method)


def setting(method: str, n_effects: int) -> str:
    return "Single effect" if method in ("base", "lightning") else f"{n_effects} effects in 1"


def main_table(rows: pd.DataFrame, *, by_category: bool = False) -> str:
    """Table 1: Setting | Method | n | CLIP ↑ ... BCR ↓ | NFE ↓, each cell a mean with its 95 %
    interval over test sources; bold = significantly best."""
    if rows.empty:
        return "_no rows_"
    cols = metric_columns(rows)
    by = ["method"] + (["category"] if by_category else [])
    groups = cluster_columns(rows, by, cols)
    n = int(rows["n_effects"].max())
    present = {k for g in groups.values() for k in g}
    methods = method_order([k[0] if by_category else k for k in present])
    keys = [k for m in methods for k in sorted(present, key=str) if (k[0] if by_category else k) == m]
    out = pd.DataFrame({"Setting": [setting(k[0] if by_category else k, n) for k in keys],
                        "Method": [label(k[0] if by_category else k) for k in keys]})
    if by_category:
        out.insert(2, "Category", [k[1] for k in keys])
    out["n"] = n_sources(groups, keys)
    for c in cols:
        if by_category:  # best per column within each category
            shown = [""] * len(keys)
            cats = [k[1] for k in keys]
            for cat in dict.fromkeys(cats):
                idx = [i for i, k in enumerate(cats) if k == cat]
                for i, cell in zip(idx, ci_column(groups[c.label], [keys[i] for i in idx], c)):
                    shown[i] = cell
            out[c.header] = shown
        else:
            for header, cells in ratio_columns(groups[c.label], keys, c).items():
                out[header] = cells
    costs = training_cost(rows, "method")
    if not by_category and not costs.empty:
        for header, cells in cost_cells(costs, keys).items():
            out[header] = cells
    return render(out) + "\n\n" + SIGNIFICANCE_NOTE + ("" if costs.empty else " " + COST_NOTE)


def scaling_table(rows: pd.DataFrame, role: str = "CLIP") -> str:
    """LoRA scaling: Method | 10 LoRAs | 20 LoRAs | ... for one role, with 95 % intervals (bold =
    significantly best in its column)."""
    cols = [c for c in metric_columns(rows, paper_roles=False) if c.role == role and c.metric]
    if not cols:
        return f"_no measured {role}-role metric_"
    c = cols[0]
    groups = cluster_columns(rows, ["method", "n_effects"], [c])[c.label]
    methods = method_order({m for m, _ in groups})
    out = pd.DataFrame({"Method": [label(m) for m in methods]})
    sizes = sorted({k for _, k in groups})
    for n in sizes:
        sub = {m: groups[(m, n)] for m in methods if (m, n) in groups}
        out[f"{n} LoRAs"] = ci_column(sub, methods, c)
    text = f"{c.header} (`{c.metric}`)\n\n" + render(out) + "\n\n" + SIGNIFICANCE_NOTE
    costs = training_cost(rows[rows.method.isin(methods)], ["method", "n_effects"])
    if costs.empty:
        return text
    passes = pd.DataFrame({"Method": [label(m) for m in methods]})
    for n in sizes:
        passes[f"{n} LoRAs"] = [_row_cost(costs, (m, n)) for m in methods]
    return text + "\n\nTraining cost (sample passes · CPU hours) of each row:\n\n" + render(passes) + \
        "\n\n" + COST_NOTE


def _off(ab: str) -> tuple[str, ...]:
    """The components an ``ablation`` row value switches off ("none" / "": none)."""
    return () if ab in ("", "none") else tuple(ab.split(","))


def ablation_name(ab: str) -> str:
    """The paper's row number of an ``ablation`` value, "(1)" ... "(5)", or "off: ..." for others."""
    return paper.ablation_exp(_off(ab)) or f"off: {ab}"


def ablation_order(values: Iterable[str]) -> list[str]:
    """``ablation`` values in the paper's row order (1) -> (5), others after."""
    return sorted(values, key=lambda ab: (paper.ablation_exp(_off(ab)) or "(9)", ab))


def ablation_table(rows: pd.DataFrame) -> str:
    """Exp | PDSR | AOP | TS | TA-FM | n | metrics: one row per set of components switched off,
    each cell with its 95 % interval (bold = significantly best)."""
    if rows.empty:
        return "_no rows_"
    cols = [c for c in metric_columns(rows) if c.role != "NFE"]
    groups = cluster_columns(rows, ["ablation"], cols)
    keyed = ablation_order({k for g in groups.values() for k in g})
    out = pd.DataFrame({"Exp.": [ablation_name(ab) for ab in keyed]})
    names = {"pdsr": "PDSR", "aop": "AOP", "ts": "TS", "tafm": "TA-FM"}
    for comp in paper.ABLATION_COMPONENTS:
        out[names[comp]] = ["" if comp in _off(ab) else "✓" for ab in keyed]
    out["n"] = n_sources(groups, keyed)
    for c in cols:
        for header, cells in ratio_columns(groups[c.label], keyed, c).items():
            out[header] = cells
    costs = training_cost(rows, "ablation")
    if not costs.empty:
        for header, cells in cost_cells(costs, keyed).items():
            out[header] = cells
    return render(out) + "\n\n" + SIGNIFICANCE_NOTE + ("" if costs.empty else " " + COST_NOTE)


def per_effect_table(rows: pd.DataFrame, by: str = "method") -> str:
    """Effect | kind | fidelity metric | n | one column per ``by`` group (method, or ablation row):
    each effect's own fidelity (``fidelity_metric``: texture energy for a texture,
    the nearest-variant error otherwise) with its 95 % interval over that effect's test sources;
    bold = significantly best in the effect's row (a texture: closest to 1, by log-distance).
    What a mean over effects hides -- a student right on some effects and off on others -- shows
    here."""
    ok = quality(rows)
    ok = ok[ok["status"] == "ok"]
    if ok.empty or "variation" not in ok.columns:
        return "_no rows_"
    present = list(dict.fromkeys(ok[by].astype(str)))
    groups = method_order(present) if by == "method" else ablation_order(present)
    names = [label(g) for g in groups] if by == "method" else [ablation_name(g) for g in groups]
    lines = []
    for effect, sub in ok.groupby("effect", sort=True):
        kind = str(sub["variation"].iloc[0])
        metric = fidelity_metric(kind)
        m = sub[sub.metric == metric]
        if m.empty:
            continue
        col = Column(metric, metric, "", bool(_first(m, "higher_is_better", False)),
                     ideal=None if pd.isna(_first(m, "ideal", None)) else float(_first(m, "ideal", None)))
        per = {g: stats.cluster_means(x) for g, x in m.groupby(m[by].astype(str))}
        n = max((len(v) for v in per.values()), default=0)
        lines.append([effect, kind, f"{metric} {col.arrow}", str(n)] + ci_column(per, groups, col))
    if not lines:
        return "_no rows_"
    frame = pd.DataFrame(lines, columns=["Effect", "kind", "fidelity", "n"] + names)
    return render(frame) + ("\n\nPer effect: mean ± half-width of the 95 % interval over that effect's test sources; "
                            "bold only where one column is significantly best in its row.")


# deployment --------------------------------------------------------------------------------------

DEPLOY_METHOD = {"baseline": "Baseline (N LoRAs + Lightning)", "ours": "Ours (⌈N/capacity⌉ CollectionLoRAs)",
                 "ours_hotswap": "Ours, hotswapped (unfused CollectionLoRAs, past capacity)",
                 "base": "Base (true CFG, per-effect LoRA)"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def human_seconds(s: float) -> str:
    if s == 0:
        return "0 s"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def deployment_agg(metric: str) -> str:
    """Latencies: the median request (robust to load spikes on a shared machine); others: the mean."""
    return "median" if metric.endswith("_s") else "mean"


def deployment_table(rows: pd.DataFrame) -> str:
    """Metric | Method | N=10 | ... with the paper's three blocks first, then switching and serving."""
    if rows.empty:
        return "_no deployment rows_"
    rows = rows.copy()
    rows["router"] = rows["router"].fillna("") if "router" in rows.columns else ""
    ok = rows[rows.status == "ok"]
    ns = sorted(rows["n_effects"].unique())
    lines: list[dict] = []

    def block(title: str, metric: str, methods: Sequence[str], text: Callable[[float, pd.DataFrame], str],
              router: str = "", higher: bool = False, bold: bool = True) -> None:
        sub = ok[(ok.metric == metric) & (ok.router == router)]
        if sub.empty:
            return
        means = sub.groupby(["method", "n_effects"])["value"].agg(deployment_agg(metric))
        present = [m for m in methods if m in sub.method.unique()]
        per_n = {n: [means.get((m, n), float("nan")) for m in present] for n in ns}
        shown = {n: ["—" if pd.isna(v) else text(v, sub[(sub.method == m) & (sub.n_effects == n)])
                     for m, v in zip(present, per_n[n])] for n in ns}
        for j, m in enumerate(present):
            line = {"Metric": title if j == 0 else "", "Method": DEPLOY_METHOD.get(m, m)}
            for n in ns:
                v, s = per_n[n][j], shown[n][j]
                finite = [x for x in per_n[n] if not pd.isna(x)]
                best = (max(finite) if higher else min(finite)) if finite else None
                # bold the best only where it reads differently from another method's value
                distinct = bold and len({t for t in shown[n] if t != "—"}) > 1
                line[f"N={n}"] = f"**{s}**" if distinct and not pd.isna(v) and math.isclose(v, best) else s
            lines.append(line)

    routers = [r for r in dict.fromkeys(rows.loc[rows.metric == "routing_latency_s", "router"]) if r]
    for r in routers:
        block(f"Routing latency ↓ ({r})", "routing_latency_s", ["baseline", "ours"], lambda v, _: human_seconds(v), r)
    for r in routers:
        block(f"Routing accuracy ↑ ({r})", "routing_accuracy", ["baseline", "ours"], lambda v, _: f"{v:.0%}", r,
              higher=True)

    def storage(v: float, sub: pd.DataFrame) -> str:
        files = ok[(ok.metric == "storage_files") & ok.method.isin(sub.method.unique()) &
                   ok.n_effects.isin(sub.n_effects.unique())]["value"]
        k = int(files.iloc[0]) if len(files) else 0
        return human_bytes(v) + (f" ({k} file{'s' if k != 1 else ''})" if k else "")

    block("Storage ↓", "storage_bytes", ["baseline", "ours"], storage)
    block("Switch: load + unload ↓", "switch_load_unload_s", ["baseline"], lambda v, _: human_seconds(v))
    block("Switch: hotswap ↓", "switch_hotswap_s", ["baseline", "ours_hotswap"], lambda v, _: human_seconds(v))
    block("Fuse once (start-up) ↓", "fuse_once_s", ["ours"], lambda v, _: human_seconds(v))
    block("Switch: fused collection ↓", "switch_fused_s", ["ours"], lambda v, _: human_seconds(v))
    block("End-to-end per image ↓", "e2e_latency_s", ["base", "baseline", "ours", "ours_hotswap"],
          lambda v, _: human_seconds(v))
    # process-wide peak RSS on CPU is dominated by the framework: shown, not ranked
    block("Peak memory ↓", "peak_memory_bytes", ["base", "baseline", "ours", "ours_hotswap"],
          lambda v, _: human_bytes(v),
          bold=not rows.loc[rows.metric == "peak_memory_bytes", "note"].astype(str).str.contains("rss").any())
    if not lines:
        return "_no deployment rows_"
    text = render(pd.DataFrame(lines))
    text += ("\n\nRouters: `exact` matches a trigger word or the exact instruction (paraphrases never contain "
             "them); `embedding` is a weight-free hashed n-gram TF-IDF nearest neighbour; `mllm` asks an "
             "OpenAI-compatible endpoint.")
    missing = rows[rows.status != "ok"][["metric", "router", "note"]].drop_duplicates(["router", "note"])
    for r in missing.itertuples():
        text += f"\n\n_{r.metric}{f' ({r.router})' if r.router else ''}: missing — {r.note}_"
    return text


# ----------------------------------------------------------------------------------------------
# the paper's numbers (always labelled as the paper's)


def paper_main_table() -> str:
    out = []
    for m, vals in paper.MAIN.items():
        line = {"Setting": paper.MAIN_SETTING[m], "Method": label(m)}
        for r in paper.ROLES:
            v = vals[r]
            line[f"{r} {ARROW[paper.HIGHER_IS_BETTER[r]]}"] = v if isinstance(v, str) else fmt(float(v), r)
        out.append(line)
    return render(pd.DataFrame(out))


def paper_scaling_table() -> str:
    out = [{"Method": label(m), **{f"{n} LoRAs": fmt(v) for n, v in vals.items()}} for m, vals in paper.SCALING.items()]
    return "CLIP ↑\n\n" + render(pd.DataFrame(out))


def paper_deployment_table() -> str:
    names = {"routing_latency_s": "Routing latency ↓", "routing_accuracy": "Routing accuracy ↑", "storage": "Storage ↓"}
    out = []
    for metric, per_method in paper.DEPLOYMENT.items():
        for j, (m, vals) in enumerate(per_method.items()):
            line = {"Metric": names[metric] if j == 0 else "", "Method": "Baseline" if m == "baseline" else "Ours"}
            for n, v in vals.items():
                line[f"N={n}"] = (f"{v:.0%}" if metric == "routing_accuracy" else
                                  f"{v:g}s" if metric == "routing_latency_s" else str(v))
            out.append(line)
    return render(pd.DataFrame(out))


def paper_ablation_table() -> str:
    names = {"pdsr": "PDSR", "aop": "AOP", "ts": "TS", "tafm": "TA-FM"}
    out = []
    for row in paper.ABLATION:
        line = {"Exp.": row["exp"]}
        for comp in paper.ABLATION_COMPONENTS:
            line[names[comp]] = "✓" if comp in row["on"] else ""
        for r in paper.ROLES[:-1]:
            line[f"{r} {ARROW[paper.HIGHER_IS_BETTER[r]]}"] = fmt(float(row[r]))
        out.append(line)
    return render(pd.DataFrame(out))
