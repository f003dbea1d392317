"""``python -m xfusion``: the same command line as the ``xfusion`` script."""

from __future__ import annotations

from xfusion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
