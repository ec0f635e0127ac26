"""pytest setup: the tests folder on sys.path (helpers in shagcl_testlib.py and shagcl_dist_helpers.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
