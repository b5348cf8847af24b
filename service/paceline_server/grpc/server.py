"""The gRPC server: `paceline.v1.Paceline` plus the standard health service and server
reflection (so grpcurl and grpc_health_probe work without the .proto file).

It runs on its own thread pool beside uvicorn in the `paceline-server serve` process and
shares that process's `PacelineService`, so both transports see the same engine cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from paceline_server.app.service import PacelineService
from paceline_server.grpc.service import SERVICE_NAME, PacelineHandlers
from paceline_server.settings import Settings
from paceline_server.transport.metrics import Metrics
from paceline_server.transport.ratelimit import RateLimiter

__all__ = ["SERVICE_NAME", "GrpcServer", "create_server"]


class GrpcServer:
    """A started-or-not gRPC server and the port it bound (useful when asked for 0)."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer,
                 port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, let calls in flight finish for `grace` seconds, stop."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


class _Unknown(grpc.GenericRpcHandler):
    """Consulted after every service: answers (and counts) a method none of them has."""

    def __init__(self, handlers: PacelineHandlers) -> None:
        self.handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler[bytes, None] | None:
        return self.handlers.unknown_method(str(handler_call_details.method))


def create_server(service: PacelineService, settings: Settings, *, port: int | None = None,
                  host: str | None = None, metrics: Metrics | None = None,
                  limiter: RateLimiter | None = None,
                  max_workers: int | None = None) -> GrpcServer:
    """Build (not start) the server on `host:port` (default: the settings' host and
    `grpc_port`). Messages up to `max_body_bytes` are accepted, as over REST. Calls take
    from `limiter`'s buckets (the REST app's, to share one budget per client; a limiter
    of its own when none is given and the settings ask for one)."""
    port = settings.grpc_port if port is None else port
    if port is None:
        raise ValueError("no gRPC port: set grpc_port or pass port")
    host = host or settings.host
    workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
    server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="paceline-grpc"),
                         options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                  ("grpc.max_send_message_length", -1),
                                  # a port in use must fail, not be shared silently
                                  ("grpc.so_reuseport", 0)])
    handlers = PacelineHandlers(service, settings, metrics,
                                limiter or RateLimiter.from_settings(settings))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        m.name: grpc.unary_unary_rpc_method_handler(  # bytes in: `guard` decodes them
            handlers.guard(m), response_serializer=m.response.SerializeToString)
        for m in handlers.methods()}),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.add_generic_rpc_handlers((_Unknown(handlers),))  # last: what no one else has
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return GrpcServer(server, health_servicer, bound)
