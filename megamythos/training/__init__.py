"""DeepSpeed pretraining: arguments, ds_config, schedules, checkpoints, telemetry, signals, the loop."""
