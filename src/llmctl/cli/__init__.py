"""The command line: a thin layer over the core that parses arguments and renders results."""
