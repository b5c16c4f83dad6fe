"""The fictional world's schema: its entity kinds and the relations between them, with
every way the world talks about each relation (the search query for the fact, 1-hop
question phrasings, sentences for the subject's and the object's articles, nested noun
phrases). Pure data: the generator (`agent.data.world`) and the writer
(`agent.data.text`) both read it."""

from __future__ import annotations

from dataclasses import dataclass

# Every entity kind: countries first, then the named kinds in the order agent.data.world creates them.
KINDS = ("country", "city", "person", "org", "work", "ship", "machine", "event")
TWO_SECTION_KINDS = {"person": "career", "org": "history"}  # second article title suffix


# ----------------------------------------------------------------------------- relations and phrasing

@dataclass(frozen=True)
class Relation:
    """One relation and every way the world talks about it.

    Templates use {s} for the subject's reference, {o} for the object (its reference, or the
    literal value), {ao} for the literal with its indefinite article and {full} for the
    subject's full name.
    """

    subjects: tuple[str, ...]  # subject kinds
    object: str  # object kind, or "year" / "category" for literal values
    query: str  # what a search for this fact appends to the subject's name: "Orin Kael founder"
    questions: tuple[str, ...]  # 1-hop question phrasings
    says: tuple[str, ...]  # sentences in the subject's article
    phrases: tuple[str, ...] = ()  # noun phrases naming the object via the subject, to nest questions
    said_by_object: tuple[str, ...] = ()  # sentences in the object's article; empty: never stated there
    section: int = 0  # which of the subject's articles states it
    object_section: int = 0  # which of the object's articles states it


RELATIONS: dict[str, Relation] = {
    "occupation": Relation(
        ("person",), "category", "occupation",
        ("What was the occupation of {s}?", "What did {s} do for a living?", "What was {s} by profession?"),
        ("{s} (full name {full}) was {ao}.", "{s}, born {full}, was {ao}.", "{s} (full name {full}) worked as {ao}.")),
    "born_in": Relation(
        ("person",), "city", "place of birth",
        ("Where was {s} born?", "In which city was {s} born?", "What is the birthplace of {s}?"),
        ("{s} was born in {o}.", "{s} was born in the city of {o}.", "The birthplace of {s} was {o}."),
        phrases=("the birthplace of {s}", "the city where {s} was born")),
    "birth_year": Relation(
        ("person",), "year", "year of birth",
        ("In what year was {s} born?", "When was {s} born?", "What is the birth year of {s}?"),
        ("{s} was born in the year {o}.", "The year of birth of {s} is recorded as {o}.", "{s} was born in {o}.")),
    "mentor": Relation(
        ("person",), "person", "mentor",
        ("Who was the mentor of {s}?", "Under whom did {s} study?", "Who mentored {s}?"),
        ("{s} studied under {o}.", "The mentor of {s} was {o}.", "{s} trained for several years under {o}."),
        phrases=("the mentor of {s}",),
        said_by_object=("{o} was the mentor of {s}.", "{o} mentored {s}.", "Among the students of {o} was {s}."),
        object_section=1),
    "located_in": Relation(
        ("city",), "country", "country",
        ("In which country is {s} located?", "Which country is {s} in?", "In which country does {s} lie?"),
        ("{s} is a city in {o}.", "{s} is located in {o}.", "{s} lies in the country of {o}."),
        phrases=("the country where {s} lies", "the country in which {s} is located")),
    "currency": Relation(
        ("country",), "category", "currency",
        ("What is the currency of {s}?", "Which currency is used in {s}?"),
        ("The currency of {s} is the {o}.", "{s} uses the {o} as its currency.")),
    "founded_by": Relation(
        ("org",), "person", "founder",
        ("Who founded {s}?", "Who was the founder of {s}?", "Who established {s}?"),
        ("{s} was founded by {o}.", "The founder of {s} was {o}.", "{o} established {s}."),
        phrases=("the founder of {s}", "the person who founded {s}"),
        said_by_object=("{o} founded {s}.", "{o} went on to establish {s}.", "{o} is remembered as the founder of {s}."),
        object_section=1),
    "founded_year": Relation(
        ("org",), "year", "year founded",
        ("In what year was {s} founded?", "When was {s} established?", "What year was {s} founded in?"),
        ("{s} was founded in {o}.", "{s} was established in the year {o}.", "The year {o} saw the founding of {s}.")),
    "headquartered_in": Relation(
        ("org",), "city", "headquarters",
        ("Where is {s} headquartered?", "In which city is {s} headquartered?",
         "Which city is home to the headquarters of {s}?"),
        ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.", "{s} has its seat in the city of {o}."),
        phrases=("the city where {s} is headquartered", "the home city of {s}"),
        said_by_object=("{o} is home to the headquarters of {s}.", "{s} has its headquarters in {o}.")),
    "author": Relation(
        ("work",), "person", "author",
        ("Who wrote {s}?", "Who is the author of {s}?", "Who was {s} written by?"),
        ("{s} was written by {o}.", "The author of {s} is {o}.", "{o} wrote {s}."),
        phrases=("the author of {s}", "the writer of {s}"),
        said_by_object=("{o} wrote {s}.", "{o} is the author of {s}.", "Among the writings of {o} is {s}."),
        object_section=1),
    "published_year": Relation(
        ("work",), "year", "year published",
        ("When was {s} first published?", "In what year was {s} published?"),
        ("{s} was first published in {o}.", "{s} appeared in print in {o}.",
         "The first edition of {s} was published in {o}.")),
    "designer": Relation(
        ("ship", "machine"), "person", "designer",
        ("Who designed {s}?", "Who was the designer of {s}?"),
        ("{s} was designed by {o}.", "The designer of {s} was {o}.", "{o} drew up the plans for {s}."),
        phrases=("the designer of {s}",),
        said_by_object=("{o} designed {s}.", "{o} is credited with the design of {s}."),
        object_section=1),
    "builder": Relation(
        ("ship", "machine"), "org", "builder",
        ("Which organisation built {s}?", "Who built {s}?", "By whom was {s} built?"),
        ("{s} was built by {o}.", "The builder of {s} was {o}.", "{o} built {s}."),
        phrases=("the builder of {s}", "the organisation that built {s}"),
        said_by_object=("{o} built {s}.", "Among the works of {o} was the construction of {s}."),
        object_section=1),
    "launch_year": Relation(
        ("ship",), "year", "year launched",
        ("In what year was {s} launched?", "When was {s} launched?"),
        ("{s} was launched in {o}.", "{s} was first put to sea in {o}.")),
    "completion_year": Relation(
        ("machine",), "year", "year completed",
        ("In what year was {s} completed?", "When was {s} completed?"),
        ("{s} was completed in {o}.", "Work on {s} was finished in {o}.")),
    "venue": Relation(
        ("event",), "city", "location",
        ("Where did {s} take place?", "In which city was {s} held?", "In which city did {s} take place?"),
        ("{s} took place in {o}.", "{s} was held in the city of {o}.", "The host city of {s} was {o}."),
        phrases=("the city where {s} took place", "the host city of {s}"),
        said_by_object=("{o} hosted {s}.", "{s} was held in {o}.")),
    "event_year": Relation(
        ("event",), "year", "year",
        ("In what year did {s} take place?", "When was {s} held?"),
        ("{s} took place in {o}.", "{s} was held in the year {o}.")),
    "organiser": Relation(
        ("event",), "org", "organiser",
        ("Who organised {s}?", "Which organisation organised {s}?"),
        ("{s} was organised by {o}.", "The organiser of {s} was {o}."),
        phrases=("the organiser of {s}",),
        said_by_object=("{o} organised {s}.", "{o} was the organiser of {s}."),
        object_section=1),
}
RELATIONS_BY_KIND = {kind: tuple(r for r, spec in RELATIONS.items() if kind in spec.subjects)
                     for kind in KINDS}
ENTITY_KINDS = frozenset(RELATIONS_BY_KIND)
OPENING_RELATIONS = frozenset({"occupation"})  # stated first: it introduces a person with the full name

YEAR_RELATION = {"person": "birth_year", "org": "founded_year", "work": "published_year",
                 "ship": "launch_year", "machine": "completion_year", "event": "event_year"}
