"""Dataset adapters: a root folder in its official layout -> classes, video records and splits
(UCF50/101, HMDB51, Kinetics, Something-Something, class-per-folder, har synth), the manifest of
known datasets, and `har synth`'s generator of a small dataset made here."""
