"""Train a SentencePiece tokenizer (byte fallback, fixed pad/bos/eos/unk ids) on a streamed sample of files.

Example:
    python tokenizer/train_tokenizer.py --input 'corpus/*.jsonl' --vocab-size 32000 --model-prefix out/tok
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megamythos.data.sources import FORMATS, expand_inputs, iter_texts  # noqa: E402
from megamythos.data.tokenizer import MODEL_TYPES, TokenizerTrainConfig, train_tokenizer  # noqa: E402
from megamythos.errors import TIMED_CLI_LOG_FORMAT, ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="files or globs")
    parser.add_argument("--vocab-size", type=int, required=True, help="pieces, >= 300")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="bpe", help="SentencePiece model type")
    parser.add_argument("--input-format", choices=FORMATS, default=None, help="default: by file suffix")
    parser.add_argument("--json-key", default="text", help="JSON field holding the text")
    parser.add_argument("--max-sentences", type=int, default=200_000,
                        help="size of the uniform sample of line chunks trained on")
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1, help="trainer threads")
    args = parser.parse_args(argv)

    def train() -> int:
        config = TokenizerTrainConfig(vocab_size=args.vocab_size, model_prefix=args.model_prefix,
                                      model_type=args.model_type, max_sentences=args.max_sentences,
                                      num_threads=args.num_threads)
        tokenizer = train_tokenizer(iter_texts(expand_inputs(args.input), args.json_key, args.input_format), config)
        print(f"wrote {tokenizer.model_path}: vocab_size={tokenizer.vocab_size} pad={tokenizer.pad_id} "
              f"bos={tokenizer.bos_id} eos={tokenizer.eos_id} unk={tokenizer.unk_id} sha256={tokenizer.fingerprint}")
        return 0

    return run_cli(train, log_format=TIMED_CLI_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
