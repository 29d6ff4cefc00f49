"""Frame and feature stores: the Zarr v3 / HDF5 format (docs/design.md has the schema), its lossy
frame codec, the declared-shape checks, safe replacement of a store, the latest-store pointers,
and `har status`."""
