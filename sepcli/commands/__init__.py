"""One module per command; each exposes ``register(app)``. Commands stay thin: parse, call the
library, render."""
