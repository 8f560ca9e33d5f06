import os
import sys

# tests import the project's packages the way main.py does: with the repo root first on the path
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
