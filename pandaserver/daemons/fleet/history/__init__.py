"""The run history a master writes: the keeper on the loop, the writer thread, the spool
file kept over a stop, and the pruning schedule. ``FleetDb`` alone uses them."""
