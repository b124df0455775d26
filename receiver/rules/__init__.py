"""Pure decisions, no I/O: the records they decide over, task transitions, what each write does, ids,
signatures, the JSON policy, delivery health and the congestion window."""
