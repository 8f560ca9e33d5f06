"""Evaluation: features of a gallery and its queries, similarities, the metrics table (evaluator.py), which the
training engine's evaluation hook, test.py (through inference/runs.py) and THI use.  It reads no config: a trained
run is read back with its config in inference/."""
