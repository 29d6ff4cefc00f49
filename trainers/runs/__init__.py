"""A run on disk and what is made of it: the run folder (`rundir`), running a task into it and
reading it back (`runner`), metrics, the report, `har compare`, `har cv`, trackers, explanation
pictures, and `har demo`."""
