"""Built-in diagnostic generators that exercise the runtime end to end without trained weights."""
