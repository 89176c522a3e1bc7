"""``python -m semcache``: see :mod:`semcache.cli`."""

from .cli import main

raise SystemExit(main())
