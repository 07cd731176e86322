"""The command line: a click group; rich output lives here and only here."""
