"""Command-line programs: argument parsing, exit codes and printing. Nothing imports this package."""
