"""Every process a run starts ends with the run: process table, process trees, cgroups."""
