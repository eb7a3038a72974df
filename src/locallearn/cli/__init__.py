"""Command-line interface: one module per subcommand, registered in COMMANDS."""

from locallearn.registry import Registry

# name -> module-like object with add_arguments(parser) and run(args) -> int
COMMANDS: Registry = Registry("command")
