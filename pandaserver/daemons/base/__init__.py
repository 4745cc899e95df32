"""The shared vocabulary of master and worker: states, the protocol and lifeline, runs, clock, log sinks."""
