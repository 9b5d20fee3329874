"""Build the default corpus (tokenizer + dataset) from the local Python standard library.

``python data_prep/build_default_corpus.py --help``; the logic is :func:`megamythos.data.cli.default_corpus_main`.
"""
import sys

from megamythos.data.cli import default_corpus_main as main

if __name__ == "__main__":
    sys.exit(main())
