"""The Claude simulator: a Messages API stand-in over HTTP for the real anthropic SDK
(``roastq simulator``, ``python -m roastq.simulator``, the tests and the demo)."""
