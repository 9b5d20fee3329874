"""Train a SentencePiece tokenizer on a streamed sample of files: ``python tokenizer/train_tokenizer.py --help``.

The logic is :func:`megamythos.data.cli.train_tokenizer_main`.
"""
import sys

from megamythos.data.cli import train_tokenizer_main as main

if __name__ == "__main__":
    sys.exit(main())
