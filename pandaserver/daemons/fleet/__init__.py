"""The master's database side: lanes, leases, renewal and fencing, ranking, history writing and pruning."""
