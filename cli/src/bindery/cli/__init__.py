"""`bindery`: Bindery from a terminal. Each subcommand is a module with `register(subparsers)`."""
