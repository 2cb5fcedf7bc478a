"""The gRPC transport of the local cloud, kept apart from the services behind it.

A service module is plain Python: methods that take a request message and return a
response message, raising `RpcError` to answer an error status. This module turns such
methods into a gRPC service under Google's own service name, so the official clients
talk to it unchanged, and applies the fault knobs and the requests' field behaviours
(frontend/fieldbehavior.py: OUTPUT_ONLY fields cleared, a missing REQUIRED one refused) to every call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import proto  # type: ignore[import-untyped]
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_status import rpc_status

from cf2run.localcloud.frontend import fieldbehavior
from cf2run.localcloud.settings import FaultInjector


class RpcError(Exception):
    """Answer the call with `code` and `message`, as Google's API would; `details` (google.rpc
    messages such as ErrorInfo and Help) go in the rich status (``grpc-status-details-bin``),
    where google-api-core reads them (`GoogleAPICallError.details`, `.reason`)."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def abort(self, context: grpc.ServicerContext) -> None:
        if not self.details:
            context.abort(self.code, self.message)
        packed = []
        for detail in self.details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=self.code.value[0], message=self.message, details=packed)))


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, message)


#: A message class: a proto-plus class (cloudbuild_v1, run_v2) or a protobuf class.
MessageType = Any
#: One RPC: the method, its request type and its response type.
Method = tuple[Callable[[Any], Any], MessageType, MessageType]
#: The text an API answers for a missing REQUIRED field: (request type, field path) -> message.
MissingField = Callable[[str, str], str]


def required_field_not_present(request: str, path: str) -> str:
    """Cloud Run's answer, as its v2 API gives it for an empty Service (googleapis/
    google-cloud-java#11101: "Violation in CreateServiceRequest.service.template: required
    field not present.")."""
    return f"Violation in {request}.{path}: required field not present."


def _codec(message_type: MessageType) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if issubclass(message_type, proto.Message):
        return message_type.deserialize, message_type.serialize
    if issubclass(message_type, Message):
        return message_type.FromString, lambda m: m.SerializeToString()
    raise TypeError(f"{message_type!r} is not a message class")


def service_handler(full_name: str, methods: Mapping[str, Method], faults: FaultInjector,
                    missing: MissingField = required_field_not_present) -> grpc.GenericRpcHandler:
    """A gRPC service named `full_name` (``google.devtools.cloudbuild.v1.CloudBuild``);
    `missing` words the INVALID_ARGUMENT for a request that lacks a REQUIRED field."""
    short = full_name.rsplit(".", 1)[-1]
    handlers = {}
    for name, (func, request_type, response_type) in methods.items():
        decode, _ = _codec(request_type)
        _, encode = _codec(response_type)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _guarded(f"{short}.{name}", func, faults, missing),
            request_deserializer=decode, response_serializer=encode)
    return grpc.method_handlers_generic_handler(full_name, handlers)


def _guarded(method: str, func: Callable[[Any], Any], faults: FaultInjector,
             missing: MissingField) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        fault = faults.check(method)
        if fault is not None and not fault.after_effect:
            context.abort(getattr(grpc.StatusCode, fault.code), f"{fault.message} ({method})")
        try:
            accept(request, missing)
            answer = func(request)
        except RpcError as error:
            error.abort(context)
        if fault is not None:  # it took effect; its answer is lost on the way back
            context.abort(getattr(grpc.StatusCode, fault.code), f"{fault.message} ({method})")
        return answer

    return call


def accept(request: Any, missing: MissingField) -> None:
    """`request` as the service should see it: its OUTPUT_ONLY fields cleared (AIP-203: ignored,
    never an error); INVALID_ARGUMENT, worded by `missing`, when it lacks a REQUIRED field."""
    fieldbehavior.clear_output_only(request)
    path = fieldbehavior.missing_required(request)
    if path is not None:
        name = type(request).pb(request).DESCRIPTOR.name if isinstance(
            request, proto.Message) else request.DESCRIPTOR.name
        raise invalid(missing(name, path))


def serve(handlers: list[grpc.GenericRpcHandler], port: int = 0,
          interceptors: Sequence[grpc.ServerInterceptor] = ()) -> tuple[grpc.Server, int]:
    """Start a gRPC server on 127.0.0.1 (never 0.0.0.0); returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc"),
                         interceptors=list(interceptors))
    server.add_generic_rpc_handlers(handlers)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    return server, bound
