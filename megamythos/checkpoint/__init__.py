"""Checkpoint files without the trainer: the tag directory layout and records (``files``), reading a tag or an
export into a model (``reader``), and the export command line (``export``)."""
