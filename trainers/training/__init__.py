"""Training: the frozen configs, the loop, optimisers and schedules, checkpoints, numeric limits,
the task kinds (a head on features, a video model on clips), data-parallel and joint training."""
