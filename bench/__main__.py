"""``python -m bench`` (``make bench``): the README's "What it saves" run.

Calibrates the threshold for precision 0.90 on the dev pairs of QQP and langcache,
replays the first 3,000 QQP test pairs and the langcache test split through the sidecar,
and writes the table into README.md and the plots into docs/.  Extra arguments are
passed on to ``semcache bench savings``.
"""

from __future__ import annotations

import sys

from semcache.cli import main

README_RUN = ["bench", "savings", "--workload", "qqp", "--workload", "langcache",
              "--limit", "3000", "--target-precision", "0.90", "--plots", "docs",
              "--readme", "README.md"]

if __name__ == "__main__":
    sys.exit(main(README_RUN + sys.argv[1:]))
