"""The data side of har: videos in, frame and feature stores out. No training code lives here.

    core/      what every layer uses: registries, atomic files, lineage and fingerprints, store
               locations (local or object storage), output rules, devices, the Dask runner
    decoding/  video decoding (PyAV), bitstream headers, frame sampling, augmented views, recipes
    datasets/  dataset adapters (official layouts, split files) and `har synth`'s generator
    stores/    the Zarr v3 / HDF5 store format, its checks, safe replacement, `har status`
    stages/    the two stages, `har extract` and `har features`, and the frozen backbones
"""
