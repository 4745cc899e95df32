"""The worker process: import scripts, run one assignment at a time, label output, guard the lifeline."""
