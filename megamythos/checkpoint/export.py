"""Export a training checkpoint to one consolidated ``model.safetensors`` + ``config.json``, with the tokenizer
the run trained with (``tokenizer.model`` and its record ``tokenizer.json``: fingerprint and vocab size).

    python -m megamythos.checkpoint.export runs/tiny/checkpoints exported/tiny      # newest complete checkpoint
    python -m megamythos.checkpoint.export runs/tiny/checkpoints/iter_0000060 exported/tiny
    python -m megamythos.checkpoint.export runs/tiny/checkpoints exported/tiny-hf --format hf   # Hugging Face directory

``--format native`` (default) is what ``megamythos.inference.generate``/``evaluate --load`` read. ``--format hf``
writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(DIR)`` load, modeling code included (:mod:`megamythos.hf.export`; needs the
``hf`` extra).

Checkpoints are read by :mod:`megamythos.checkpoint.reader`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from megamythos.checkpoint.files import read_tokenizer_files, write_tokenizer_files
from megamythos.checkpoint.reader import CONFIG_FILE, MODEL_FILE, checkpoint_model, resolve_tag_dir
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import ArgumentParser, UserError, run_cli

logger = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """The checkpoint cannot be exported."""


def export(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors``, ``out_dir/config.json`` and, when the checkpoint carries its
    tokenizer, ``out_dir/tokenizer.model`` + ``out_dir/tokenizer.json``; returns the safetensors path."""
    from safetensors.torch import save_model

    tag_dir = resolve_tag_dir(checkpoint)
    out_dir = Path(out_dir)
    model = checkpoint_model(tag_dir, out_dir)
    path = out_dir / MODEL_FILE
    save_model(model, str(path))
    model.config.to_json(out_dir / CONFIG_FILE)
    record = read_tokenizer_files(tag_dir)
    if record is None:
        logger.warning("%s carries no tokenizer; generate/evaluate from %s will need --tokenizer", tag_dir, out_dir)
    else:
        write_tokenizer_files(out_dir, Tokenizer(record["tokenizer_model"]))
    logger.info("exported %s -> %s", tag_dir, path)
    return path


def export_hf_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write checkpoint ``checkpoint`` as a Hugging Face directory ``out_dir`` (see the module docstring)."""
    from megamythos.hf.export import export_hf

    tag_dir = resolve_tag_dir(checkpoint)
    record = read_tokenizer_files(tag_dir)
    if record is None:
        raise ExportError(f"{tag_dir} carries no tokenizer (tokenizer.json); a Hugging Face export needs one")
    model = checkpoint_model(tag_dir, Path(out_dir))
    return export_hf(model, Tokenizer(record["tokenizer_model"]), out_dir)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m megamythos.checkpoint.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint tag directory, or a --save directory (uses `latest`)")
    p.add_argument("out", help="output directory for model.safetensors, config.json and the tokenizer")
    p.add_argument("--format", choices=("native", "hf"), default="native",
                   help="native: what megamythos.inference.generate/evaluate --load read (default); hf: a Hugging Face "
                        "directory with its modeling code (transformers, trust_remote_code=True)")
    args = p.parse_args(argv)

    def run() -> int:
        if args.format == "hf":
            print(json.dumps({"hf_dir": str(export_hf_checkpoint(args.checkpoint, args.out))}))
            return 0
        path = export(args.checkpoint, args.out)
        print(json.dumps({"model": str(path), "config": str(Path(args.out) / CONFIG_FILE)}))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
