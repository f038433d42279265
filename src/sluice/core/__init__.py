"""Pure, sans-IO logic: no sockets, event loops, clocks or kernel access."""
