"""Settings of the process a model runs in, shared by the trainer and the inference command lines (host memory)."""
