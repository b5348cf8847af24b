"""Built-in weightings: one module per strategy, each built only on the shared modules of
`paceline_server.strategies` (never on another weighting; see
tests/test_strategy_imports.py). The registry names them; import a class from its module."""
