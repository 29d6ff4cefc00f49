"""Frame and feature stores: the Zarr v3 / HDF5 format (docs/design.md has the schema), its lossy
frame codec, a store read as an input (checked, verified against its checksums), the declared-shape
checks, safe replacement of a store, the latest-store pointers, and `har status`."""
