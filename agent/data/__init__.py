"""The data layer: QA loaders (`qa`: FlashRAG JSONL, Search-R1 parquet, a generated
world's splits) and the fictional world generator (`world`, with its `entities`,
`relations`, `names` and `text`). It imports nothing above `agent.types` and `retrieval`,
so the trainer, the rewards and the evaluation all read data through it.
"""
