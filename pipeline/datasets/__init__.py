"""Dataset adapters: a root folder in its official layout -> classes, video records and splits, one
module per family (ucf: UCF50/101, hmdb: HMDB51, kinetics: Kinetics-400/600/700, ssv2:
Something-Something v2, folder: class-per-folder, synth: har synth's generator and its adapter),
their registry `DATASETS` (datasets), and what they share: the index, its error and the manifest
of known datasets (index), the split arrays (splits), reading a root without leaving it (scan)."""
