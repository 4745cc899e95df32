"""The daemon: master process, workers, scheduling and bundled scripts."""
