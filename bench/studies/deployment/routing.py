"""Routing cost: paraphrased requests, and each router's latency and accuracy on them.

The baseline routes among N effect LoRAs. Ours needs no router while one CollectionLoRA holds
every effect (latency 0 because no call is made, accuracy 100%); beyond the capacity the same
router picks an effect and a request is right when that effect lives in the right CollectionLoRA.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Sequence

from bench.studies.deployment.measure import DeploymentRows, timed
from bench.studies.deployment.routers import ROUTERS, Candidate, RouterUnavailable

# --------------------------------------------------------------------------------------------
# paraphrased instructions

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "image": ("picture", "photo", "shot"), "picture": ("image", "photo"), "photo": ("picture", "image"),
    "colour": ("color", "hue"), "colours": ("colors", "hues"), "colored": ("coloured", "tinted"),
    "dark": ("dim", "shadowy"), "darkened": ("dimmed", "shaded"), "bright": ("light", "brilliant"),
    "covers": ("fills", "is over"), "laid": ("placed", "put"), "over": ("across", "on top of"),
    "fine": ("thin", "narrow"), "wide": ("broad", "thick"), "soft": ("gentle", "subtle"),
    "strong": ("heavy", "intense"), "effect": ("look", "style", "filter"), "small": ("tiny", "little"),
    "large": ("big", "huge"), "whole": ("entire", "full"), "everything": ("the whole scene", "all of it"),
}
_TEMPLATES: tuple[str, ...] = (
    "Make this {thing} look like the {phrase} {kind}.",
    "Could you give my {thing} a {phrase} look?",
    "I'd like the {phrase} treatment on this one.",
    "Turn it into something where {desc}",
    "Edit so that {desc}",
    "Please apply a {phrase} {kind} to the {thing}.",
    "{desc_cap} Do that to my {thing}.",
    "Want: {phrase}. Keep the subject recognisable.",
)


def effect_phrase(prompt: str) -> str:
    """``"Apply the sepia gradient map effect."`` -> ``"sepia gradient map"`` (else the prompt)."""
    text = prompt.strip().rstrip(".")
    low = text.lower()
    if low.startswith("apply the ") and low.endswith(" effect"):
        return text[len("apply the "):-len(" effect")]
    return text


def _swap_words(text: str, rng: random.Random, rate: float) -> str:
    out = []
    for word in text.split():
        core = word.strip(".,:;!?").lower()
        if core in _SYNONYMS and rng.random() < rate:
            out.append(word.lower().replace(core, rng.choice(_SYNONYMS[core])))
        else:
            out.append(word)
    return " ".join(out)


def _vague(text: str, rng: random.Random, keep: float) -> str:
    """What a user remembers of a description: its first clause, some words dropped."""
    clause = re.split(r"[:;,]", text.strip().rstrip("."))[0]
    words = clause.split()
    kept = [w for w in words if rng.random() < keep] or words[:1]
    return " ".join(kept)


def paraphrases(effect: Candidate, n: int, seed: int = 0) -> list[str]:
    """``n`` paraphrased requests for ``effect``, written from its instruction and description
    (never its trigger word): synonyms swapped, the description cut to its first clause with
    words dropped, as a user would half-remember it. Deterministic per (effect, seed)."""
    rng = random.Random(zlib.crc32(f"{effect.lora_name}|{seed}".encode()))
    phrase = effect_phrase(effect.prompt)
    desc = (effect.description or effect.prompt).strip()
    out: list[str] = []
    order = list(range(len(_TEMPLATES)))
    rng.shuffle(order)
    for i in range(n):
        template = _TEMPLATES[order[i % len(order)]]
        d = _swap_words(_vague(desc, rng, 0.8), rng, 0.6)
        p = _swap_words(_vague(phrase, rng, 0.85), rng, 0.5)
        text = template.format(thing=rng.choice(("photo", "picture", "image", "pic")), phrase=p,
                               kind=rng.choice(("effect", "style", "filter")), desc=d[0].lower() + d[1:] + ".",
                               desc_cap=d[0].upper() + d[1:] + ".")
        out.append(text)
    return out


def exact_requests(effect: Candidate) -> list[str]:
    """Requests that name the effect exactly: its trigger word, and its own instruction."""
    return [r for r in (f"{effect.trigger} please" if effect.trigger else None, effect.prompt) if r]


def collection_of(index: int, capacity: int) -> int:
    """Effects are packed into CollectionLoRAs in catalogue order, ``capacity`` each."""
    return index // capacity


def measure_routing(rows: DeploymentRows, effects: Sequence[Candidate], routers: Sequence[str], *, capacity: int,
                    requests_per_effect: int, seed: int) -> None:
    requests = [(i, text) for i, e in enumerate(effects) for text in paraphrases(e, requests_per_effect, seed)]
    index = {e.lora_name: i for i, e in enumerate(effects)}
    n_collections = math.ceil(len(effects) / capacity)
    names = [effects[i].lora_name for i, _ in requests]
    for router_name in routers:
        try:
            router = ROUTERS.get(router_name)(effects)
            latency, correct, ours_correct = [], [], []
            for true, text in requests:
                dt, chosen = timed(lambda: router.route(text))
                latency.append(dt)
                correct.append(float(chosen == effects[true].lora_name))
                ours_correct.append(float(chosen is not None and
                                          collection_of(index[chosen], capacity) == collection_of(true, capacity)))
        except RouterUnavailable as err:
            for method in ("baseline", "ours"):
                for metric, higher in (("routing_latency_s", False), ("routing_accuracy", True)):
                    rows.add(method, metric, [math.nan], higher=higher, router=router_name, status="missing",
                             note=str(err))
            continue
        note = f"{len(requests)} paraphrased requests over {len(effects)} effects"
        rows.add("baseline", "routing_latency_s", latency, higher=False, router=router_name, note=note, effects=names)
        rows.add("baseline", "routing_accuracy", correct, higher=True, router=router_name, note=note, effects=names)
        if n_collections == 1:
            why = "one CollectionLoRA serves every effect: no router call is made"
            rows.add("ours", "routing_latency_s", [0.0] * len(requests), higher=False, router=router_name, note=why,
                     effects=names)
            rows.add("ours", "routing_accuracy", [1.0] * len(requests), higher=True, router=router_name, note=why,
                     effects=names)
        else:
            why = f"{n_collections} CollectionLoRAs: right when the chosen effect is in the right collection"
            rows.add("ours", "routing_latency_s", latency, higher=False, router=router_name, note=why, effects=names)
            rows.add("ours", "routing_accuracy", ours_correct, higher=True, router=router_name, note=why,
                     effects=names)
