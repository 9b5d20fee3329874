"""Tokenise documents into Megatron-compatible .bin/.idx datasets: ``python data_prep/preprocess_data.py --help``.

The logic is :func:`megamythos.data.cli.preprocess_main`.
"""
import sys

from megamythos.data.cli import preprocess_main as main

if __name__ == "__main__":
    sys.exit(main())
