"""The dataset audit (audit.py, the page's Audit tab): which image-caption pairs the run's own division believes
wrong, ranked, with a second opinion of the MLLM and a cleaned annotation file.

division.py        the one module that reaches into the division (solver/): the run's method, its verdict per pair
pairs.py           the audited pairs, numbered as the training set and its noise files number them
ranking.py         the ranking, identity ranks, truth metrics (AUROC, precision at K), the summary's tables
second_opinion.py  the MLLM's P(yes) for the top suspects and a control set (thi/prompts.py AUDIT_PROMPT)
cleaned.py         the annotation file without the dropped pairs, and its noise file
store.py           the audit's folder: pairs.csv, summary, stages a rerun continues from, the page's marks
cli.py             python audit.py
"""
