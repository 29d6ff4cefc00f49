"""From a video file to the frames a recipe stores: PyAV decoding (streaming, frame-exact,
cancellable), the few bitstream bits that locate frames, the sampling strategies, the augmented
views, and the recipe that names all of it."""
