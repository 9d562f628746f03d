"""`python -m deploy check`: see `deploy.check`."""

from __future__ import annotations

import sys

from deploy.check import main

if __name__ == "__main__":
    if sys.argv[1:] != ["check"]:
        print("usage: python -m deploy check", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
