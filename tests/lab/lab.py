"""Entry point of the lab program: `python tests/lab/lab.py up|down|status|...` (as root)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hvlab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
