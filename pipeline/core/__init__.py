"""What every layer of har uses: one registry shape, atomic file writes, lineage and fingerprints,
store locations (a path or an object-storage URL), the rules for where har may write, the device
rule, resource estimates and the task runner (in-process or Dask)."""
