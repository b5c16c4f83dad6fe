"""Evaluation presets: the settings of a published protocol under one name (`--preset`).

A preset only sets defaults of `python -m eval.run`; a flag given on the command line
wins. Nothing is downloaded at run time: the question files, the corpus and the index
must already be on disk.

`hot` — the ReSeek "Hot benchmark" protocol
-------------------------------------------
Train on the NQ and HotpotQA train splits; test on the seven QA sets Search-R1 reports
(NQ, TriviaQA, PopQA, HotpotQA, 2WikiMultihopQA, MuSiQue, Bamboogle) plus FictionalHot;
retrieve with E5 over the December 2018 Wikipedia dump, top-3 passages; at most 4 tool
turns; headline metric EM. The preset sets `--passages-per-search 3` and `--max-turns 9`: room for 4
searches, a JUDGE after each and the answer (this project's loop counts every action as
a turn; for a policy that never judges, `--max-turns 5` is the same budget). The search
budget of 4 is enforced by the loop (a fifth search is an invalid action) and
`metrics.json` also reports `over_search_budget`, which stays 0 under the preset.

With the FlashRAG files (`nq/test.jsonl`, `hotpotqa/dev.jsonl`, ...) and its
`wiki-18.jsonl` corpus under `~/flashrag`:

    python -m retrieval.build --corpus ~/flashrag/retrieval-corpus/wiki-18.jsonl \\
        --out indexes/wiki18-e5 --method dense --model intfloat/e5-base-v2
    for set in nq/test triviaqa/test popqa/test hotpotqa/dev 2wikimultihopqa/dev musique/dev bamboogle/test; do
        python -m eval.run --preset hot --policy outputs/grpo/final \\
            --data ~/flashrag/$set.jsonl --index indexes/wiki18-e5 --out runs/hot/${set%/*}
    done
    python -m eval.run --preset hot --policy outputs/grpo/final \\
        --data ~/fictionalhot/test.jsonl --index indexes/fictionalhot-e5 --out runs/hot/fictionalhot
    python -m eval.compare runs/hot/* --out runs/hot/compare.md

(`intfloat/e5-base-v2` must be in the local Hugging Face cache; e5's "query: " /
"passage: " prefixes are switched on by its name.) The dev files stand in for test sets
whose answers are not public, as in Search-R1. FictionalHot is searched over the corpus
it is released with, indexed the same way. Baselines under the same protocol:
`--policy direct` (no retrieval: a model that scores on FictionalHot has memorised it)
and `--policy rag` (one top-3 retrieval, then an answer).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "hot": {
        "passages_per_search": 3,  # E5 top-3 passages per search
        "max_turns": 9,  # 4 searches + a judge after each + the answer
        "search_budget": 4,  # the protocol's tool-turn cap, reported as over_search_budget
        "headline": "em",
    },
}

HOT_TEST_SETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "fictionalhot")
HOT_TRAIN_SETS = ("nq", "hotpotqa")
