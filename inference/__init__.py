"""A trained run put to use: read back with its config and data, or published checkpoint files with a config
(runs.py: test.py, THI, RDA, the search page), and searching a folder of one's own images with it
(retrieval_index.py: retrieve.py, the search page).  It reads configs (configs/), so it sits above them.
"""
