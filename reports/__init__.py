"""What a finished run is looked at with (the files it writes, no model needed):

    tables.py             runs beside the published tables (python -m reports.tables logs/ --paper), with the
                          published numbers (published_results.yaml)
    curves.py             a run's training curves from metrics.jsonl (python -m reports.curves RUN_DIR)
    ranklists.py          rank-list pictures (test.py --visualize, retrieve.py --save)

It imports only utils/.
"""
