"""Validate an indexed dataset, print its statistics and decode a few documents.

``python data_prep/inspect_dataset.py --help``; the logic is :func:`megamythos.data.cli.inspect_main`.
"""
import sys

from megamythos.data.cli import inspect_main as main

if __name__ == "__main__":
    sys.exit(main())
