"""``kubeplex-runtime``: the serving process (see runtime_image/README.md)."""

from __future__ import annotations

import sys


def main() -> int:
    print("kubeplex-runtime: not built yet (issue 4)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
