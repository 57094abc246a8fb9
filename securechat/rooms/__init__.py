"""Pure, server only: the room as a state machine (who is here, chat fan-out, file relays,
presence batches, rate budgets). The time is an argument; actions come out, nothing is called."""
