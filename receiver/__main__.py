"""`python -m receiver`: the same command line as the `receiver` script (receiver.cli.main)."""

import sys

from receiver.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
