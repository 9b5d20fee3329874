"""Planning a run before renting it: the per-GPU memory plan (``memory``), the parallel layout and its checks
(``layout``), the step-time model (``step_model``) and their command line (``plan``)."""
