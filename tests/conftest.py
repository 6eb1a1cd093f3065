"""Make `ansible_collections.hvfleet.drain` and the lab package importable from this checkout."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "hvfleet", "drain")

if not os.path.isdir(os.path.join(LINK, "plugins")):
    raise RuntimeError(f"{LINK} is missing: run scripts/setup (it links the collection into .collections)")

for path in (COLLECTIONS, os.path.join(ROOT, "tests", "lab")):
    if path not in sys.path:
        sys.path.insert(0, path)
