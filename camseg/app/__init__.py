"""The command line: one module per command, the console and the demo."""
