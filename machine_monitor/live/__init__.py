"""Live monitoring: the loop, its windows, the alert policy and the event sinks."""
