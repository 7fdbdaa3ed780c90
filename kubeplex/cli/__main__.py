import sys

from kubeplex.cli import main

sys.exit(main())
