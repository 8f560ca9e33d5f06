"""Evaluation and reading trained runs back: the application layer over model/ and datasets/ that test.py,
retrieve.py, THI and the training engine use (utils/ below it holds only helpers that import nothing of the project).

evaluator.py        features of a gallery and its queries, similarities, the metrics table
runs.py             a run folder (or published checkpoint files + a config) -> config, dataset, models
retrieval_index.py  searching a folder of one's own images with a run (retrieve.py), features cached per file
"""
