"""REST transport (FastAPI): parse, authenticate, call a use case, map errors."""
