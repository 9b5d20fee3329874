"""Concatenate indexed datasets: ``python data_prep/merge_datasets.py --help``.

The logic is :func:`megamythos.data.cli.merge_main`.
"""
import sys

from megamythos.data.cli import merge_main as main

if __name__ == "__main__":
    sys.exit(main())
