"""What every transport of the service shares: the error table, bearer-token scopes and
request metrics. REST (`api/`) and gRPC (`grpc/`) both build on this package and never on
each other, so either can change (or a third be added) without touching the other."""
