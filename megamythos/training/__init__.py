"""DeepSpeed pretraining: arguments, ds_config, layout, schedules, checkpoints, telemetry, signals, the loop."""
