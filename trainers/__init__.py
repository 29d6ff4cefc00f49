"""The model side of har: training on stores, runs and their reports, and using a trained run.

    models/     sequence heads, video models by family, the model catalog, a run's differentiable chain
    training/   configs, the loop, optimisers, checkpoints, task kinds, distributed and joint training
    data/       what training reads: store views, clips, how joint batches mix datasets
    runs/       run folders, metrics, reports, compare, cross-validation, trackers, the demo
    inference/  using a trained run: predict, timelines, the server, export, explain
    clikit.py   what every command of cli.py shares: the app, the error boundary, options, choices
    console.py  what the commands print: progress, the epoch table, each command's results
"""
