"""The `cxrlt` command line: thin argument parsing that calls into the packages."""
