"""google.longrunning.Operations: the long-running operations behind Create/Update/Delete.

Each local service owns one `Operations` store; its methods start, update and finish
operations, and `handler()` serves GetOperation / ListOperations / WaitOperation /
DeleteOperation so the official clients' `operation.result()` works unchanged.
"""

from __future__ import annotations

import threading
import time

import grpc
import proto  # type: ignore[import-untyped]
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from cf2run.localcloud.frontend.grpcapi import RpcError, service_handler
from cf2run.localcloud.settings import FaultInjector


def pack(message: Message | proto.Message) -> any_pb2.Any:
    """Wrap a protobuf or proto-plus message in an Any."""
    packed = any_pb2.Any()
    packed.Pack(type(message).pb(message) if isinstance(message, proto.Message) else message)
    return packed


class Operations:
    """A thread-safe store of operations, named by the caller (``projects/P/.../operations/ID``)."""

    def __init__(self) -> None:
        self._ops: dict[str, operations_pb2.Operation] = {}
        self._changed = threading.Condition()

    def start(self, name: str, metadata: Message | proto.Message) -> operations_pb2.Operation:
        op = operations_pb2.Operation(name=name, done=False, metadata=pack(metadata))
        with self._changed:
            self._ops[name] = op
            return _copy(op)

    def update(self, name: str, metadata: Message | proto.Message) -> None:
        with self._changed:
            self._ops[name].metadata.CopyFrom(pack(metadata))
            self._changed.notify_all()

    def succeed(self, name: str, response: Message | proto.Message,
                metadata: Message | proto.Message | None = None) -> None:
        with self._changed:
            op = self._ops[name]
            if metadata is not None:
                op.metadata.CopyFrom(pack(metadata))
            op.response.CopyFrom(pack(response))
            op.done = True
            self._changed.notify_all()

    def fail(self, name: str, code: grpc.StatusCode, message: str,
             metadata: Message | proto.Message | None = None) -> None:
        with self._changed:
            op = self._ops[name]
            if metadata is not None:
                op.metadata.CopyFrom(pack(metadata))
            op.error.CopyFrom(status_pb2.Status(code=code.value[0], message=message))
            op.done = True
            self._changed.notify_all()

    def get(self, name: str) -> operations_pb2.Operation:
        with self._changed:
            if name not in self._ops:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"operation {name!r} not found")
            return _copy(self._ops[name])

    def wait(self, name: str, timeout_s: float) -> operations_pb2.Operation:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while name in self._ops and not self._ops[name].done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return self.get(name)

    # -- the google.longrunning.Operations service --------------------------------------

    def handler(self, faults: FaultInjector) -> grpc.GenericRpcHandler:
        return service_handler("google.longrunning.Operations", {
            "GetOperation": (self._get, operations_pb2.GetOperationRequest,
                             operations_pb2.Operation),
            "ListOperations": (self._list, operations_pb2.ListOperationsRequest,
                               operations_pb2.ListOperationsResponse),
            "WaitOperation": (self._wait, operations_pb2.WaitOperationRequest,
                              operations_pb2.Operation),
            "DeleteOperation": (self._delete, operations_pb2.DeleteOperationRequest,
                                empty_pb2.Empty),
        }, faults)

    def _get(self, request: operations_pb2.GetOperationRequest) -> operations_pb2.Operation:
        return self.get(request.name)

    def _wait(self, request: operations_pb2.WaitOperationRequest) -> operations_pb2.Operation:
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField(
            "timeout") else 60.0
        return self.wait(request.name, timeout)

    def _list(self, request: operations_pb2.ListOperationsRequest
              ) -> operations_pb2.ListOperationsResponse:
        with self._changed:
            ops = [_copy(op) for name, op in self._ops.items() if name.startswith(request.name)]
        return operations_pb2.ListOperationsResponse(operations=ops)

    def _delete(self, request: operations_pb2.DeleteOperationRequest) -> empty_pb2.Empty:
        with self._changed:
            self._ops.pop(request.name, None)
        return empty_pb2.Empty()


def _copy(op: operations_pb2.Operation) -> operations_pb2.Operation:
    copied = operations_pb2.Operation()
    copied.CopyFrom(op)
    return copied
