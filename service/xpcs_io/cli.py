"""``python -m xpcs_io.cli``: the ``xpcs-io`` command, kept at this path for scripts that run it.

The command lives in ``xpcs_io.tools.cli``.
"""

import sys

from xpcs_io.tools.cli import banner, build_parser, main

__all__ = ["banner", "build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
