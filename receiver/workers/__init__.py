"""Background loops of a running receiver: polling, the submit sweeper, file capture, the outbox
dispatcher and the pruner."""
