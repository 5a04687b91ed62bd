"""The paper's own numbers (CollectionLoRA, arXiv 2605.25378; tables as published on the project
page, copied from ``shared/seeds/``), as data. Reports show them *beside* measured rows and
always labelled as the paper's: they are never mixed into a measured column or its bold best.

Keys use the harness's names: methods are registry names (``base``, ``lightning``,
``fm_all_in_1``, ``ours``), metric columns are paper roles (``CLIP``, ``DreamSim``, ``DINO``,
``VSA``, ``EditReward``, ``BCR``, ``NFE``).
"""

from __future__ import annotations

SOURCE = "CollectionLoRA (arXiv 2605.25378), project page tables"

# Paper column order and direction (True: higher is better).
ROLES: tuple[str, ...] = ("CLIP", "DreamSim", "DINO", "VSA", "EditReward", "BCR", "NFE")
HIGHER_IS_BETTER: dict[str, bool] = {"CLIP": True, "DreamSim": False, "DINO": True, "VSA": True,
                                     "EditReward": True, "BCR": False, "NFE": False}

# Display names of the paper's rows.
METHOD_LABELS: dict[str, str] = {
    "base": "Base",
    "lightning": "Base + Lightning",
    "fm_all_in_1": "FM all-in-1 + Lightning",
    "ours": "Ours (CollectionLoRA)",
    "merge_linear": "Merge linear + Lightning",
    "merge_ties": "Merge TIES + Lightning",
    "merge_dare": "Merge DARE + Lightning",
}

# Table 1 -- 50 effects, EffectBench. Setting column as in the paper. NFE of Base is 40 x 2 (CFG).
MAIN_SETTING: dict[str, str] = {"base": "Single effect", "lightning": "Single effect",
                                "fm_all_in_1": "50 effects in 1", "ours": "50 effects in 1"}
MAIN: dict[str, dict[str, float | str]] = {
    "base":        {"CLIP": 0.726, "DreamSim": 0.434, "DINO": 0.611, "VSA": 4.075, "EditReward": 1.007,
                    "BCR": 0.141, "NFE": "40×2"},
    "lightning":   {"CLIP": 0.717, "DreamSim": 0.441, "DINO": 0.612, "VSA": 3.901, "EditReward": 0.986,
                    "BCR": 0.168, "NFE": 8},
    "fm_all_in_1": {"CLIP": 0.703, "DreamSim": 0.468, "DINO": 0.611, "VSA": 4.150, "EditReward": 0.929,
                    "BCR": 0.217, "NFE": 8},
    "ours":        {"CLIP": 0.727, "DreamSim": 0.425, "DINO": 0.600, "VSA": 4.380, "EditReward": 1.052,
                    "BCR": 0.087, "NFE": 8},
}

# LoRA scaling -- CLIP vs number of effects.
SCALING_N: tuple[int, ...] = (10, 20, 50, 100, 180)
SCALING: dict[str, dict[int, float]] = {
    "base":        {10: 0.735, 20: 0.724, 50: 0.726, 100: 0.723, 180: 0.724},
    "lightning":   {10: 0.716, 20: 0.712, 50: 0.717, 100: 0.717, 180: 0.722},
    "fm_all_in_1": {10: 0.725, 20: 0.722, 50: 0.703, 100: 0.694, 180: 0.689},
    "ours":        {10: 0.741, 20: 0.723, 50: 0.727, 100: 0.716, 180: 0.709},
}

# Deployment cost vs number of effects. "baseline" = one LoRA per effect (+ router), "ours" =
# ceil(N / 50) CollectionLoRAs. Storage in the paper's own unit (one LoRA file is 2.2 GB).
DEPLOYMENT_N: tuple[int, ...] = (10, 20, 50, 100, 150)
DEPLOYMENT: dict[str, dict[str, dict[int, object]]] = {
    "routing_latency_s": {"baseline": {10: 6.88, 20: 6.95, 50: 7.09, 100: 7.22, 150: 9.18},
                          "ours": {10: 0.0, 20: 0.0, 50: 0.0, 100: 7.22, 150: 9.18}},
    "routing_accuracy": {"baseline": {10: 0.99, 20: 0.94, 50: 0.87, 100: 0.85, 150: 0.76},
                         "ours": {10: 1.00, 20: 1.00, 50: 1.00, 100: 0.90, 150: 0.82}},
    "storage": {"baseline": {10: "2.2G×10", 20: "2.2G×20", 50: "2.2G×50", 100: "2.2G×100", 150: "2.2G×150"},
                "ours": {10: "2.2G", 20: "2.2G", 50: "2.2G", 100: "2.2G×2", 150: "2.2G×3"}},
}
PAPER_CAPACITY = 50  # effects per CollectionLoRA in the paper's deployment table

# Component ablation, 50-in-1. Rows (1)-(5): which of PDSR / AOP / TS / TA-FM are on.
ABLATION_COMPONENTS: tuple[str, ...] = ("pdsr", "aop", "ts", "tafm")
ABLATION: list[dict[str, object]] = [
    {"exp": "(1)", "on": (), "CLIP": 0.725, "DreamSim": 0.434, "DINO": 0.514, "VSA": 2.756,
     "EditReward": 0.989, "BCR": 0.378},
    {"exp": "(2)", "on": ("pdsr",), "CLIP": 0.732, "DreamSim": 0.427, "DINO": 0.525, "VSA": 3.720,
     "EditReward": 1.008, "BCR": 0.207},
    {"exp": "(3)", "on": ("pdsr", "aop"), "CLIP": 0.736, "DreamSim": 0.420, "DINO": 0.541, "VSA": 4.018,
     "EditReward": 0.979, "BCR": 0.199},
    {"exp": "(4)", "on": ("pdsr", "aop", "tafm"), "CLIP": 0.727, "DreamSim": 0.426, "DINO": 0.590,
     "VSA": 4.248, "EditReward": 0.976, "BCR": 0.108},
    {"exp": "(5)", "on": ("pdsr", "aop", "ts", "tafm"), "CLIP": 0.727, "DreamSim": 0.425, "DINO": 0.600,
     "VSA": 4.380, "EditReward": 1.052, "BCR": 0.087},
]


def ablation_exp(components_off: tuple[str, ...] | frozenset[str]) -> str | None:
    """The paper's experiment label of an ablation (components switched off), or None."""
    on = frozenset(ABLATION_COMPONENTS) - frozenset(components_off)
    for row in ABLATION:
        if frozenset(row["on"]) == on:  # type: ignore[arg-type]
            return str(row["exp"])
    return None
