"""One module per ``hpmodel`` subcommand: each parses its arguments into a config and calls
the public API."""
