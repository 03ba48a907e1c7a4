"""A real OTLP/gRPC receiver for tests: grpcio with opentelemetry-proto's TraceServiceServicer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port
from tests.tracing.collector import Collector


class GrpcCollector(Collector):
    """Records spans like the HTTP collector; ``fail_with`` makes Export answer an error."""

    fail_with: Any = None  # a grpc.StatusCode
    retry_delay: float | None = None
    metadata: list[dict[str, str]]


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: GrpcCollector) -> None:
        self.collector = collector

    def Export(
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        collector = self.collector
        collector.metadata.append(dict(context.invocation_metadata()))
        if collector.fail_with is not None:
            status = status_pb2.Status(
                code=collector.fail_with.value[0], message="collector says no"
            )
            if collector.retry_delay is not None:
                info = error_details_pb2.RetryInfo(
                    retry_delay=Duration(seconds=int(collector.retry_delay))
                )
                detail = AnyProto()
                detail.Pack(info)
                status.details.append(detail)
            context.abort_with_status(_RichStatus(collector.fail_with, status))
        collector.add(request)
        return ExportTraceServiceResponse()


class _RichStatus(grpc.Status):
    def __init__(self, code: Any, status: Any) -> None:
        self.code = code
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


@contextmanager
def running_grpc_collector(port: int | None = None) -> Iterator[GrpcCollector]:
    port = port or free_port()
    collector = GrpcCollector(url=f"http://127.0.0.1:{port}")
    collector.metadata = []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(collector), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield collector
    finally:
        server.stop(grace=None)
