"""gRPC transport (package `paceline.v1`): parse, authenticate, call a use case, map
errors — the same use cases, error table and token scopes as the REST transport in `api/`.
"""
