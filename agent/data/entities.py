"""A generated world's data: its config, its entities and their facts (`agent.data.world`
generates them, `agent.data.text` writes them down)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.data.relations import RELATIONS, TWO_SECTION_KINDS

@dataclass
class WorldConfig:
    """Everything that shapes a world; the same config always gives the same bytes."""

    seed: int = 0
    """Seed of every random choice."""
    entities: int = 2000
    """Approximate number of entities, countries and twins included (rounding moves it a little)."""
    distractor_rate: float = 0.15
    """Fraction of named entities created as a near-duplicate twin of another entity of their kind."""
    elsewhere_rate: float = 0.2
    """Fraction of entity-to-entity facts stated only in the object's article (e.g. only the founder's)."""
    hops: dict[int, float] = field(default_factory=lambda: {1: 0.45, 2: 0.35, 3: 0.15, 4: 0.05})
    """Question mix by number of hops (weights, normalised); 1 to 4 hops."""
    comparison_rate: float = 0.5
    """Share of 2-hop questions that compare two entities' years instead of bridging."""
    train_questions: int | None = None
    """Train questions; None means 1.5 per entity (a small model is SFT-trained on them)."""
    dev_questions: int | None = None
    """Dev questions; None means 0.15 per entity."""
    test_questions: int | None = None
    """Test questions; None means 0.25 per entity."""
    split_shares: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Share of the named entities in the train / dev / test sub-worlds."""

    def __post_init__(self) -> None:
        if self.entities < 100:
            raise ValueError(f"WorldConfig.entities must be at least 100, got {self.entities}")
        for name in ("distractor_rate", "elsewhere_rate", "comparison_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {value}")
        if not self.hops or any(h not in (1, 2, 3, 4) or w < 0 for h, w in self.hops.items()) \
                or sum(self.hops.values()) <= 0:
            raise ValueError(f"WorldConfig.hops must map hop counts 1-4 to non-negative weights, got {self.hops}")
        if len(self.split_shares) != 3 or min(self.split_shares) <= 0:
            raise ValueError(f"WorldConfig.split_shares must be three positive shares, got {self.split_shares}")
        defaults = {"train": 1.5, "dev": 0.15, "test": 0.25}
        for split, per_entity in defaults.items():
            name = f"{split}_questions"
            if getattr(self, name) is None:
                setattr(self, name, round(per_entity * self.entities))
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name} must be >= 0, got {getattr(self, name)}")

    def questions(self, split: str) -> int:
        return getattr(self, f"{split}_questions")


@dataclass(slots=True)
class Entity:
    """One entity. Fact values are entity indices (int) or literal strings (years, categories)."""

    index: int
    kind: str
    name: str
    split: str  # train | dev | test, or "shared" for countries
    aliases: tuple[str, ...] = ()  # other names, each stated in the entity's first article
    detail: str = ""  # what it is: occupation, "a craft guild", "schooner", ...
    facts: dict[str, int | str] = field(default_factory=dict)  # relation -> value
    placement: dict[str, str] = field(default_factory=dict)  # relation -> "s" | "o" | "so" (whose article states it)
    mentions: list[tuple[int, str]] = field(default_factory=list)  # (subject, relation) stated in this article
    twin_of: int | None = None  # the entity this one's name is a near-duplicate of

    @property
    def id(self) -> str:
        return f"e{self.index:07d}"

    @property
    def sections(self) -> int:
        return 2 if self.kind in TWO_SECTION_KINDS else 1

    def passage_id(self, section: int) -> str:
        return f"{self.id}-{section}"

    @property
    def ref(self) -> str:
        """How text refers to the entity: always contains the exact name."""
        if self.kind in ("org", "machine", "event"):
            return f"the {self.name}"
        if self.kind == "ship":
            return f"the ship {self.name}"
        return self.name


@dataclass
class World:
    cfg: WorldConfig
    entities: list[Entity]
    pools: dict[str, dict[str, list[int]]]  # split -> kind -> entity indices
    twins: dict[int, list[int]] = field(default_factory=dict)  # entity index -> its twins' indices

    def value_text(self, value: int | str) -> str:
        return self.entities[value].name if isinstance(value, int) else value

    def fact_support(self, entity: Entity, relation: str) -> list[str]:
        """Ids of the passages that state `relation` of `entity`."""
        spec = RELATIONS[relation]
        where = entity.placement.get(relation, "s")
        ids = [entity.passage_id(spec.section)] if "s" in where else []
        if "o" in where:
            ids.append(self.entities[entity.facts[relation]].passage_id(spec.object_section))
        return ids
