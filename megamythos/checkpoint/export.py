"""Export a training checkpoint to one consolidated ``model.safetensors`` + ``config.json``, with the tokenizer
the run trained with (``tokenizer.model`` and its record ``tokenizer.json``: fingerprint and vocab size).

    python -m megamythos.checkpoint.export runs/tiny/checkpoints exported/tiny      # newest complete checkpoint
    python -m megamythos.checkpoint.export runs/tiny/checkpoints/iter_0000060 exported/tiny
    python -m megamythos.checkpoint.export runs/tiny/checkpoints exported/tiny-hf --format hf   # Hugging Face directory

``--format native`` (default) is what ``megamythos.inference.generate``/``evaluate --load`` read. ``--format hf``
writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(DIR)`` load, modeling code included (:mod:`megamythos.hf.export`; needs the
``hf`` extra).

An export never overwrites: an existing file or non-empty directory as OUT is refused unless ``--overwrite``, and
even then unless it is an earlier export; an OUT that overlaps the checkpoint is always refused. The export is
written into ``OUT.tmp.<host>.<pid>`` beside OUT, gets its ``checksums.json``
(:mod:`megamythos.checkpoint.checksums`, verified when ``megamythos`` loads it), and is then renamed to OUT; an
OUT it replaces is renamed aside first and removed only once the new one is in place.

A model in memory (a training loop of one's own) is exported the same way by :func:`export_model`. Checkpoints are
read (and their checksums verified) by :mod:`megamythos.checkpoint.reader`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from megamythos.checkpoint.checksums import CHECKSUMS_FILE, write_checksums
from megamythos.checkpoint.files import read_tokenizer_files, read_train_record, write_tokenizer_files
from megamythos.checkpoint.reader import CONFIG_FILE, MODEL_FILE, checkpoint_model, read_newest
from megamythos.data.atomic import remove_stale_temps, temp_name, writable_parent
from megamythos.data.pretraining import document_flags
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import ArgumentParser, UserError, path_argument, run_cli
from megamythos.model.lm import MythosLM

logger = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """The checkpoint cannot be exported."""


# what a run folder or a checkpoint tag holds and an export never does: such a directory is never replaced
TRAINING_MARKERS = ("latest", "train_args.json", "model_config.json")


def check_target(out: Path, checkpoint: Path | None, overwrite: bool) -> None:
    """Raise :class:`ExportError` unless ``out`` may take an export of ``checkpoint`` (None: a model in memory):
    it must not overlap the checkpoint (be it, hold it or lie inside it) nor hold the working directory, and, when
    it exists (a file or a non-empty directory), ``overwrite`` must be on and it must be an earlier export (it has
    ``checksums.json``): ``--overwrite`` replaces an export, never a run or another folder."""
    target, cwd = out.resolve(), Path.cwd().resolve()
    source = checkpoint.resolve() if checkpoint is not None else None
    if source is not None and (target == source or target in source.parents or source in target.parents):
        raise ExportError(f"OUT {out} overlaps the checkpoint {checkpoint} (the same directory, one that holds it, "
                          "or one inside it); export into a directory outside the run")
    if target == cwd or target in cwd.parents:
        raise ExportError(f"OUT {out} is the working directory or holds it; export into a new directory")
    if not (out.is_file() or out.is_symlink() or (out.is_dir() and any(out.iterdir()))):
        return
    marker = next((name for name in TRAINING_MARKERS if (out / name).exists()), None) if out.is_dir() else None
    if marker:
        raise ExportError(f"{out} is a run folder or one of its checkpoints (it holds {marker}), which an export "
                          "never replaces; export into a new directory")
    what = "an existing file" if not out.is_dir() else "a directory that is not empty"
    if not overwrite:
        raise ExportError(f"{out} is {what}; export into a new directory, or pass --overwrite to replace it")
    if not (out.is_dir() and (out / CHECKSUMS_FILE).is_file()):
        raise ExportError(f"{out} is {what} but not an export (no {CHECKSUMS_FILE}): --overwrite replaces only an "
                          "earlier export; export into a new directory, or remove it yourself")


@contextmanager
def staged_export(out: Path, checkpoint: Path | None, overwrite: bool) -> Iterator[Path]:
    """An empty directory ``OUT.tmp.<host>.<pid>`` beside ``out`` to write an export of ``checkpoint`` (None: a
    model in memory) into. When
    the block succeeds, its checksums are written and it is renamed to ``out`` (an existing ``out`` is renamed aside
    first and removed once the new one is in place); when it fails, it is removed and ``out`` is left as it was.

    Raises :class:`ExportError` where :func:`check_target` refuses ``out``. Temporaries of killed exports beside
    ``out`` are removed first."""
    check_target(out, checkpoint, overwrite)
    writable_parent(out, "OUT")
    remove_stale_temps([out, f"{out}.old"])
    stage = Path(temp_name(out))
    try:
        stage.mkdir()
    except OSError as err:  # a parent that passes the checks but takes no new directory (/proc, a read-only mount)
        raise ExportError(f"cannot create {stage} beside OUT {out}: {err.strerror}; export into a writable "
                          "directory") from err
    try:
        yield stage
        readable_as_umask(stage)
        write_checksums(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:  # OUT again: another export or the user may have put something there since the start
        check_target(out, checkpoint, overwrite)
    except ExportError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old, replaced = Path(temp_name(f"{out}.old")), out.exists() or out.is_symlink()
    try:
        if replaced:
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except OSError:
            if replaced:
                os.rename(old, out)
            raise
    except OSError as err:
        shutil.rmtree(stage, ignore_errors=True)
        raise ExportError(f"cannot put the export in place at OUT {out} ({err.strerror or err}); it was not "
                          "written, and OUT is as it was") from err
    if replaced and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif replaced:
        old.unlink()


def readable_as_umask(directory: Path) -> None:
    """Give every file in ``directory`` the mode a plain ``open`` would (0666 less the umask): safetensors writes
    0600, which other users of a shared export could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def write_native(model: MythosLM, tokenizer: Tokenizer | None, stage: Path) -> None:
    """The native export's files of ``model`` into ``stage``: ``model.safetensors``, ``config.json`` and, with a
    tokenizer, ``tokenizer.model`` + ``tokenizer.json``."""
    from safetensors.torch import save_model

    save_model(model, str(stage / MODEL_FILE))
    model.config.to_json(stage / CONFIG_FILE)
    if tokenizer is not None:
        write_tokenizer_files(stage, tokenizer)


def hf_writer() -> Callable[[MythosLM, Tokenizer, Path], Path]:
    """:func:`megamythos.hf.export.export_hf`; without transformers (the ``hf`` extra) an :class:`ExportError`,
    raised before any work."""
    try:
        import transformers  # noqa: F401 - what megamythos.hf needs
    except ImportError as err:
        raise ExportError("--format hf needs transformers, the hf extra: pip install 'megamythos[hf]' (in a "
                          "checkout: pip install -e '.[hf]'), or export without --format hf") from err
    from megamythos.hf.export import export_hf

    return export_hf


def export_model(model: MythosLM, out_dir: str | Path, tokenizer: Tokenizer | None = None, hf: bool = False,
                 overwrite: bool = False) -> Path:
    """Export a model in memory (trained by a loop of your own, or changed after loading) as the command line
    exports a checkpoint: the native files (:func:`write_native`), or with ``hf`` a Hugging Face directory (needs
    ``tokenizer`` and transformers), with ``checksums.json``, written beside ``out_dir`` and renamed into place
    (:func:`staged_export`; ``overwrite`` replaces an earlier export only). ``load_model``, ``generate --load`` and
    ``evaluate --load`` read the native form; ``tokenizer`` is the one the model's ids are of (without it they need
    ``--tokenizer``). A ``torch.compile(model)`` is exported as the model it compiles (its own state dict's names
    carry an ``_orig_mod.`` prefix that no loader reads). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule wraps the module it compiles
    if not isinstance(model, MythosLM):
        raise ExportError(f"export_model exports a MythosLM, not a {type(model).__name__} (a DeepSpeed engine: pass "
                          "engine.module)")
    if partitioned := [name for name, p in model.named_parameters() if p.numel() != getattr(p, "ds_numel", p.numel())]:
        raise ExportError(f"{len(partitioned)} parameters of the model ({partitioned[0]}, ...) are ZeRO-3 partitions, "
                          "not whole weights: export inside deepspeed.zero.GatheredParameters(model.parameters())")
    if hf and tokenizer is None:
        raise ExportError("a Hugging Face export needs the model's tokenizer: pass tokenizer=Tokenizer(PATH)")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:  # load_model refuses such a pair
        raise ExportError(f"tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} ids but the model only "
                          f"{model.config.vocab_size}; pass the tokenizer the model was trained with")
    export_hf = hf_writer() if hf else None
    with staged_export(out_dir, None, overwrite) as stage:
        if export_hf is not None:
            export_hf(model, tokenizer, stage)
        else:
            write_native(model, tokenizer, stage)
    logger.info("exported the model to %s", out_dir)
    return out_dir


def export(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/model.safetensors``, ``out_dir/config.json``, ``out_dir/checksums.json`` and, when the
    checkpoint carries its tokenizer, ``out_dir/tokenizer.model`` + ``out_dir/tokenizer.json`` (through
    :func:`staged_export`); returns the safetensors path."""
    out_dir = Path(out_dir)

    def write(tag_dir: Path, stage: Path) -> Path:
        record = read_tokenizer_files(tag_dir)
        if record is None:
            logger.warning("%s carries no tokenizer; generate/evaluate from %s will need --tokenizer", tag_dir,
                           out_dir)
        write_native(checkpoint_model(tag_dir, stage), Tokenizer(record["tokenizer_model"]) if record else None,
                     stage)
        return tag_dir

    with staged_export(out_dir, Path(checkpoint), overwrite) as stage:  # a tag --keep-last removes is read again
        tag_dir = read_newest(checkpoint, lambda tag: write(tag, stage))
    path = out_dir / MODEL_FILE
    logger.info("exported %s -> %s", tag_dir, path)
    return path


def export_hf_checkpoint(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write checkpoint ``checkpoint`` as a Hugging Face directory ``out_dir`` (see the module docstring), with
    its ``checksums.json`` and, in its config, the packed-document flags the run recorded (``packed_documents``;
    None for a tag without ``train_args.json``), through :func:`staged_export`; returns ``out_dir``. Without
    transformers (the ``hf`` extra) it raises :class:`ExportError` before anything is read."""
    export_hf = hf_writer()
    out_dir = Path(out_dir)

    def write(tag_dir: Path, stage: Path) -> None:
        model = checkpoint_model(tag_dir, stage)
        record = read_tokenizer_files(tag_dir)
        if record is None:
            raise ExportError(f"{tag_dir} carries no tokenizer (tokenizer.json); a Hugging Face export needs one")
        run = read_train_record(tag_dir)
        export_hf(model, Tokenizer(record["tokenizer_model"]), stage,
                  document_flags(run["args"]) if "args" in run else None)

    with staged_export(out_dir, Path(checkpoint), overwrite) as stage:  # a tag --keep-last removes is read again
        read_newest(checkpoint, lambda tag: write(tag, stage))
    logger.info("wrote a Hugging Face directory to %s (load with trust_remote_code=True)", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m megamythos.checkpoint.export", description=__doc__)
    p.add_argument("checkpoint", type=path_argument,
                   help="checkpoint tag directory, or a --save directory (uses `latest`)")
    p.add_argument("out", type=path_argument,
                   help="output directory for model.safetensors, config.json and the tokenizer")
    p.add_argument("--format", choices=("native", "hf"), default="native",
                   help="native: what megamythos.inference.generate/evaluate --load read (default); hf: a Hugging Face "
                        "directory with its modeling code (transformers, trust_remote_code=True)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at OUT (an existing OUT is refused without this flag, and any "
                        "other file or folder even with it); the old one is removed only once the new one is complete")
    args = p.parse_args(argv)

    def run() -> int:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line (DeepSpeed logs to it)
            if args.format == "hf":
                result = {"hf_dir": str(export_hf_checkpoint(args.checkpoint, args.out, args.overwrite))}
            else:
                path = export(args.checkpoint, args.out, args.overwrite)
                result = {"model": str(path), "config": str(Path(args.out) / CONFIG_FILE)}
        print(json.dumps(result))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
