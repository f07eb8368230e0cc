"""The ``roastq`` command line (``roastq.cli.main``): an entry point, so unlike the core it may set
up its own process's logging. Sending a message never goes through here."""
