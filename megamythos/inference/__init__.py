"""Using a trained model: loading a checkpoint or export with its tokenizer (``loading``), depth sweeps and the
exit rule on held-out data (``evaluate``), cached generation (``generate``). Imports nothing from training."""
