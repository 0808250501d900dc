"""``python -m attnkit``: the command line."""

from .cli import main

raise SystemExit(main())
