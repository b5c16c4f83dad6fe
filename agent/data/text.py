"""How the fictional world is written down: passages and questions, in the phrasings of
`agent.data.relations`. Passages
and questions are rendered lazily from a generated `World`, each entity's articles and each
split's questions from a `random.Random` seeded by the config, so the same seed gives the
same bytes.
"""

from __future__ import annotations

import random
from typing import Iterator

from agent.data.entities import Entity, World
from agent.data.relations import (ENTITY_KINDS, OPENING_RELATIONS, RELATIONS, RELATIONS_BY_KIND, TWO_SECTION_KINDS,
                                  YEAR_RELATION)

COMPARISONS = {  # (earlier, later) phrasings
    "person": ("Who was born first, {a} or {b}?", "Who was born later, {a} or {b}?"),
    "org": ("Which was founded earlier, {a} or {b}?", "Which was founded more recently, {a} or {b}?"),
    "work": ("Which was published first, {a} or {b}?", "Which was published later, {a} or {b}?"),
    "ship": ("Which was launched earlier, {a} or {b}?", "Which was launched later, {a} or {b}?"),
    "machine": ("Which was completed earlier, {a} or {b}?", "Which was completed later, {a} or {b}?"),
    "event": ("Which took place earlier, {a} or {b}?", "Which took place later, {a} or {b}?"),
}

INTROS = {  # {s} reference, {full} first alias, {d} detail, {ad} detail with its article
    "country": ("{s}, officially the {full}, is a country.", "{s} (officially the {full}) is a sovereign country."),
    "org": ("{s} ({full}) is {d}.", "{s} ({full}) was established as {d}."),
    "work": ("{s} is {ad}.", "{s} is a celebrated {d}.", "{s} is {ad} that is still widely read."),
    "ship": ("{s} is {ad}.", "{s} was {ad} of unusual speed."),
    "machine": ("{s} is {d}.", "{s} was {d} of unusual design."),
    "event": ("{s} was {d}.", "{s} was remembered as {d} of some importance."),
}
FILLERS = {  # sentences that state no fact, so support sets stay exact
    ("person", 0): ("Little is known of the childhood of {s}.", "{s} showed an early talent for drawing."),
    ("person", 1): ("{s} was widely admired by contemporaries.", "Much of the correspondence of {s} survives.",
                    "{s} remained active well into old age."),
    ("org", 0): ("{s} grew steadily in size and reputation.",),
    ("org", 1): ("The records of {s} are kept in its own archive.", "{s} went through several changes of leadership.",
                 "{s} expanded its activities over the following decades."),
    ("city", 0): ("{s} is known for its markets and narrow streets.", "{s} has a long tradition of river trade."),
    ("country", 0): ("{s} has a long coastline.", "{s} is divided into several provinces."),
    ("work", 0): ("{s} was widely discussed on its release.", "{s} has been translated into several languages."),
    ("ship", 0): ("{s} served for many years before being retired.", "{s} was admired for her handling."),
    ("machine", 0): ("{s} attracted visitors from far away.", "{s} was later copied by several workshops."),
    ("event", 0): ("{s} drew large crowds.", "{s} was reported widely in the newspapers of the time."),
}


def with_article(word: str) -> str:
    """'painter' -> 'a painter', 'engineer' -> 'an engineer'."""
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def intro(rng: random.Random, entity: Entity) -> str:
    """The opening sentence of an entity's first article ('' for kinds that open with a fact)."""
    templates = INTROS.get(entity.kind)
    if not templates:
        return ""
    full = entity.aliases[0] if entity.aliases else entity.name
    text = rng.choice(templates).format(s=entity.ref, full=full, d=entity.detail, ad=with_article(entity.detail))
    return _capitalised(text)


def filler(rng: random.Random, entity: Entity, section: int) -> str:
    return _capitalised(rng.choice(FILLERS[(entity.kind, section)]).format(s=entity.ref))


# ----------------------------------------------------------------------------- passages

def iter_passages(world: World) -> Iterator[tuple[str, str, str]]:
    """(passage id, title, text) for every passage, in id order."""
    for entity in world.entities:
        yield from entity_passages(world, entity)


def entity_passages(world: World, entity: Entity) -> list[tuple[str, str, str]]:
    """The entity's one or two articles as (passage id, title, text)."""
    rng = random.Random(f"passages:{world.cfg.seed}:{entity.index}")
    sections: list[list[str]] = [[] for _ in range(entity.sections)]
    opening = [intro(rng, entity)] if entity.kind in INTROS else []
    for relation, value in entity.facts.items():
        if "s" in entity.placement.get(relation, "s"):
            sentence = _sentence(rng, RELATIONS[relation].says, world, entity, value)
            (opening if relation in OPENING_RELATIONS else sections[RELATIONS[relation].section]).append(sentence)
    for subject_index, relation in entity.mentions:
        subject = world.entities[subject_index]
        sentence = _sentence(rng, RELATIONS[relation].said_by_object, world, subject, entity.index)
        sections[RELATIONS[relation].object_section].append(sentence)
    passages = []
    for number, sentences in enumerate(sections):
        rng.shuffle(sentences)
        if number == 0:
            sentences[:0] = opening
        if not sentences or rng.random() < 0.3:
            sentences.append(filler(rng, entity, number))
        title = entity.name if number == 0 else f"{entity.name} ({TWO_SECTION_KINDS[entity.kind]})"
        passages.append((entity.passage_id(number), title, " ".join(sentences)))
    return passages


def _sentence(rng: random.Random, templates: tuple[str, ...], world: World, subject: Entity,
              value: int | str) -> str:
    obj = world.entities[value].ref if isinstance(value, int) else value
    full = subject.aliases[0] if subject.aliases else subject.name
    return _capitalised(rng.choice(templates).format(s=subject.ref, o=obj, ao=with_article(str(obj)), full=full))


# ----------------------------------------------------------------------------- questions

def iter_questions(world: World, split: str) -> Iterator[dict]:
    """The split's questions as FlashRAG records, with support, hops, type and chain metadata.

    Stops early (fewer questions than configured) only when the sub-world is too small to
    give that many distinct questions.
    """
    cfg = world.cfg
    rng = random.Random(f"questions:{cfg.seed}:{split}")
    hops, weights = zip(*sorted(cfg.hops.items()))
    pool = sorted(i for indices in world.pools[split].values() for i in indices)
    seen: set[tuple] = set()  # membership only; iteration order never matters
    made, misses, wanted = 0, 0, cfg.questions(split)
    while made < wanted and misses < wanted + 100:
        # Keep the drawn shape until a new question of that shape turns up: re-drawing the
        # hop count after a failed walk would tilt the mix towards the easy 1-hop questions.
        n_hops = rng.choices(hops, weights)[0]
        compare = n_hops == 2 and rng.random() < cfg.comparison_rate
        record = None
        for _ in range(30):
            record = _comparison(rng, world, split) if compare else _walk(rng, world, pool, n_hops)
            if record is not None and record[0] not in seen:
                break
            record = None
        if record is None:
            misses += 1
            continue
        seen.add(record[0])
        question, answers, chain, kind = record[1:]
        support = list(dict.fromkeys(pid for step in chain for pid in step["support"]))
        yield {"id": f"{split}-{made:06d}", "question": question, "golden_answers": answers,
               "metadata": {"support": support, "hops": len(chain), "type": kind, "split": split,
                            "chain": chain}}
        made += 1


def _answers(world: World, value: int | str) -> list[str]:
    if isinstance(value, int):
        entity = world.entities[value]
        return [entity.name, *entity.aliases]
    return [value]


def _step(world: World, entity: Entity, relation: str) -> dict:
    return {"query": f"{entity.name} {RELATIONS[relation].query}",
            "answer": world.value_text(entity.facts[relation]),
            "support": world.fact_support(entity, relation)}


def _walk(rng: random.Random, world: World, pool: list[int], n_hops: int) -> tuple | None:
    """A chain of `n_hops` relations from a random entity; None when the walk dead-ends."""
    start = world.entities[rng.choice(pool)]
    entity, path = start, []
    for hop in range(n_hops):
        last = hop == n_hops - 1
        options = [r for r in RELATIONS_BY_KIND[entity.kind]
                   if r in entity.facts and (last or RELATIONS[r].object in ENTITY_KINDS)]
        if not options:
            return None
        relation = rng.choice(options)
        path.append((entity, relation))
        if not last:
            entity = world.entities[entity.facts[relation]]
    reference = start.ref
    for _, relation in path[:-1]:
        reference = rng.choice(RELATIONS[relation].phrases).format(s=reference)
    question = rng.choice(RELATIONS[path[-1][1]].questions).format(s=reference)
    question = _capitalised(question)
    final_entity, final_relation = path[-1]
    kind = "factoid" if n_hops == 1 else "bridge" if n_hops == 2 else "compositional"
    key = ("walk", start.index, tuple(r for _, r in path))
    chain = [_step(world, e, r) for e, r in path]
    return key, question, _answers(world, final_entity.facts[final_relation]), chain, kind


def _comparison(rng: random.Random, world: World, split: str) -> tuple | None:
    """Which of two entities of one kind came first (or last), by their years."""
    kind = rng.choice(sorted(YEAR_RELATION))
    candidates = world.pools[split].get(kind, [])
    if len(candidates) < 2:
        return None
    a = world.entities[rng.choice(candidates)]
    twins = world.twins.get(a.index, []) + ([a.twin_of] if a.twin_of is not None else [])
    b = world.entities[rng.choice(twins)] if twins and rng.random() < 0.3 else world.entities[rng.choice(candidates)]
    relation = YEAR_RELATION[kind]
    year_a, year_b = int(a.facts[relation]), int(b.facts[relation])
    if a.index == b.index or year_a == year_b:
        return None
    earlier = rng.random() < 0.5
    winner = a if (year_a < year_b) == earlier else b
    template = COMPARISONS[kind][0 if earlier else 1]
    question = template.format(a=a.ref, b=b.ref)
    question = _capitalised(question)
    key = ("comparison", min(a.index, b.index), max(a.index, b.index), earlier)
    chain = [_step(world, a, relation), _step(world, b, relation)]
    return key, question, _answers(world, winner.index), chain, "comparison"
