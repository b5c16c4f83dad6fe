"""Invented names for the fictional world: pronounceable, unique, and near-duplicate twins.

Every invented word belongs to one entity only, so a name is never ambiguous by accident;
ambiguity comes only from deliberate twins (`Orin Kael` / `Orin Kale`), whose name differs
from another entity's by one changed vowel or two swapped letters, so retrieval and judging
have to read names letter by letter.

All randomness comes from the `random.Random` handed in: the same generator state gives the
same names, and nothing depends on set or hash order (sets here are membership tests only).
"""

from __future__ import annotations

import random
from agent.data.entities import Entity

OCCUPATIONS = ("painter", "sculptor", "engineer", "architect", "astronomer", "composer", "poet", "novelist",
               "shipwright", "cartographer", "physician", "merchant", "botanist", "clockmaker", "historian", "chemist")
CURRENCY_UNITS = ("crown", "mark", "florin", "ducat", "shilling", "thaler", "dinar", "real")
COUNTRY_FORMS = ("Kingdom", "Republic", "Grand Duchy", "Federation", "Principality")
WORK_FORMS = ("novel", "play", "poem", "memoir", "chronicle", "treatise", "essay collection", "short story")
SHIP_CLASSES = ("schooner", "clipper", "frigate", "barque", "steamship", "brigantine", "paddle steamer", "galleon")
ADJECTIVES = ("Ashen", "Silent", "Crimson", "Hollow", "Gilded", "Broken", "Winter", "Distant", "Iron", "Silver",
              "Last", "Hidden", "Burning", "Quiet", "Northern", "Pale", "Wandering", "Forgotten", "Bitter", "Golden")
NOUNS = ("Lantern", "Harbour", "Orchard", "Mirror", "Crown", "Tide", "Garden", "Bell", "River", "Tower",
         "Bridge", "Letter", "Compass", "Feather", "Voyage", "Sparrow", "Field", "Archive", "Gate", "Shore")

ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sk",
          "st", "t", "th", "tr", "v", "z")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "k")

ORG_TYPES = {"Guild": "a craft guild", "Company": "a trading company", "Institute": "a research institute",
             "Society": "a learned society", "Academy": "an academy of the arts", "Bank": "a private bank",
             "Foundry": "an iron foundry", "Shipyard": "a shipyard", "Press": "a publishing house",
             "Observatory": "an astronomical observatory"}
MACHINE_TYPES = {"Engine": "a steam engine", "Loom": "a mechanical loom", "Clock": "an astronomical clock",
                 "Telescope": "a refracting telescope", "Calculator": "a mechanical calculator",
                 "Pump": "a water pump", "Lamp": "a signal lamp", "Organ": "a pipe organ"}
EVENT_TYPES = {"Accord": "a peace treaty", "Exhibition": "a trade exhibition", "Regatta": "a sailing regatta",
               "Congress": "a scientific congress", "Festival": "a music festival", "Fire": "a great fire",
               "Uprising": "a popular uprising", "Games": "an athletic contest"}


class Names:
    """Invented, unique, pronounceable names. Every invented word is used by one entity only."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.words: set[str] = set()  # lowercased invented words in use (membership only)
        self.names: set[str] = set()  # lowercased entity names in use (membership only)
        self.given = sorted({self._word(2, coda=False) for _ in range(400)})
        self.words.update(g.lower() for g in self.given)  # no city or family name doubles as a given name

    def _word(self, syllables: int, coda: bool = True) -> str:
        rng = self.rng
        parts = []
        for i in range(syllables):
            onset = "" if i == 0 and rng.random() < 0.2 else rng.choice(ONSETS)
            end = rng.choice(CODAS) if (coda and i == syllables - 1) else rng.choice(("", "", "", "n", "r", "l"))
            parts.append(onset + rng.choice(VOWELS) + end)
        return "".join(parts).capitalize()

    def fresh_word(self, syllables: tuple[int, ...] = (2, 3)) -> str:
        while True:
            word = self._word(self.rng.choice(syllables))
            if 4 <= len(word) <= 11 and word.lower() not in self.words and word.lower() not in self.names:
                self.words.add(word.lower())
                return word

    def claim(self, name: str) -> bool:
        if name.lower() in self.names:
            return False
        self.names.add(name.lower())
        return True

    def new(self, kind: str) -> tuple[str, tuple[str, ...], str]:
        """(name, aliases, detail) for a fresh entity of `kind`."""
        rng = self.rng
        while True:
            aliases, detail = (), ""
            if kind == "person":
                given, family = rng.choice(self.given), self.fresh_word((1, 2))
                name = f"{given} {family}"
                aliases = (f"{given} {rng.choice(self.given)} {family}",)
                detail = rng.choice(OCCUPATIONS)
            elif kind in ("city", "ship", "country"):
                name = self.fresh_word()
                if kind == "ship":
                    detail = rng.choice(SHIP_CLASSES)
                if kind == "country":
                    aliases = (f"{rng.choice(COUNTRY_FORMS)} of {name}",)
            elif kind == "work":
                name = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
                if name.lower() in self.names:  # the English vocabulary runs out; add an invented word
                    name = f"The {rng.choice(NOUNS)} of {self.fresh_word()}"
                aliases, detail = (name[len("The "):],), rng.choice(WORK_FORMS)
            else:
                types = {"org": ORG_TYPES, "machine": MACHINE_TYPES, "event": EVENT_TYPES}[kind]
                suffix = rng.choice(sorted(types))
                name, detail = f"{self.fresh_word()} {suffix}", types[suffix]
                if kind == "org":
                    aliases = (_acronym(name),)
            if self.claim(name):
                return name, aliases, detail

    def twin(self, base: Entity) -> tuple[str, tuple[str, ...]] | None:
        """A near-duplicate of `base`'s name (one vowel changed or two letters swapped), or None."""
        words = base.name.split()
        at = _distinctive_word(base.kind, words)
        for _ in range(20):
            edited = _edit(self.rng, words[at])
            if edited is None or edited.lower() in self.words:
                continue
            name = " ".join(words[:at] + [edited] + words[at + 1:])
            if not self.claim(name):
                continue
            self.words.add(edited.lower())
            aliases = base.aliases
            if base.kind == "person":  # same given name, a middle name of its own
                aliases = (f"{words[0]} {self.rng.choice(self.given)} {edited}",)
            elif base.kind == "org":
                aliases = (_acronym(name),)
            elif base.kind == "work":
                aliases = (name[len("The "):],)
            return name, aliases
        return None


def _acronym(name: str) -> str:
    return "".join(word[0] for word in name.split() if word[0].isupper())


def _distinctive_word(kind: str, words: list[str]) -> int:
    """Index of the word a twin's name edits: the invented part, never a shared vocabulary word."""
    if kind == "person":
        return len(words) - 1
    if kind in ("org", "machine", "event"):
        return 0
    if kind == "work":
        return len(words) - 1 if "of" in words else max(range(1, len(words)), key=lambda i: len(words[i]))
    return 0


def _edit(rng: random.Random, word: str) -> str | None:
    """One small edit that keeps the first letter: swap two adjacent letters or change a vowel."""
    if len(word) < 4:
        return None
    if rng.random() < 0.5:
        i = rng.randrange(1, len(word) - 1)
        if word[i] == word[i + 1]:
            return None
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    vowels = [i for i in range(1, len(word)) if word[i] in "aeiou"]
    if not vowels:
        return None
    i = rng.choice(vowels)
    return word[:i] + rng.choice([v for v in "aeiou" if v != word[i]]) + word[i + 1:]
