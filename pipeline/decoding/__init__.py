"""From a video file to the frames a recipe stores: PyAV decoding (streaming, frame-exact,
cancellable), the few bitstream bits that locate frames, the sampling strategies, the augmented
views, the recipe that names all of it, and one video read by a recipe (its samples, or a
streamed decode's clean frames)."""
