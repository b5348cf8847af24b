"""Use cases: what the transports (REST, gRPC, CLI) can ask of a Paceline deployment."""
