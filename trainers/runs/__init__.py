"""A run on disk and what is made of it: the run folder, running a task into it, metrics, the
report, `har compare`, `har cv`, trackers, explanation pictures, and `har demo`."""
