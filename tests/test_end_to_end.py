"""Slow end-to-end checks on the default 2,000-entity world (`make test-slow`)."""

import pytest

from eval.run import main as eval_main
from fakes import world_with_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    return world_with_index(tmp_path_factory.mktemp("default"), seed=0, entities=2000, method="dense")


def test_oracle_reaches_095_em_with_the_dense_retriever(default_world):
    """Engine + parsing + retrieval together: the scripted expert answers what it retrieves."""
    metrics = eval_main(["--policy", "oracle", "--data", str(default_world / "world"), "--split", "test",
                         "--index", str(default_world / "dense"), "--out", str(default_world / "oracle")])
    assert metrics["n"] == 500
    assert metrics["em"] >= 0.95
    assert metrics["valid_action_rate"] == 1.0
    assert metrics["by_hops"]["1"]["em"] >= metrics["by_hops"]["3"]["em"]


def test_dense_recall_at_3_on_one_hop_questions(default_world):
    from agent.data.qa import load_qa
    from retrieval import open_retriever

    retriever = open_retriever(default_world / "dense")
    questions = [ex for split in ("dev", "test") for ex in load_qa(default_world / "world", split) if ex.meta["hops"] == 1]
    results = retriever.search([ex.question for ex in questions], 3)
    hits = [bool({p.doc_id for p in found} & set(ex.support)) for ex, found in zip(questions, results)]
    assert sum(hits) / len(hits) >= 0.85
