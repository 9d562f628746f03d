"""`python -m app`: the command-line interface (see `app.cli`)."""

from app.cli import main

raise SystemExit(main())
