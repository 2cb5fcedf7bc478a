"""The credential check of Google's API front end, for the local gRPC services.

Every call to a googleapis.com gRPC API carries ``authorization: Bearer ACCESS_TOKEN``; the front end
refuses a call without one, or with one it did not issue or that expired, with UNAUTHENTICATED, and one
whose scopes do not cover the API with PERMISSION_DENIED "Request had insufficient authentication
scopes." (reason ACCESS_TOKEN_SCOPE_INSUFFICIENT), before the service sees it. The messages are in
cf2run.localcloud.iam.accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from cf2run.localcloud.iam.accounts import bearer_error, bearer_token
from cf2run.localcloud.iam.metadata import TokenAuthority

_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


class RequireAccessToken(grpc.ServerInterceptor):
    """Refuse calls without a valid cloud-platform access token minted by `tokens`."""

    def __init__(self, tokens: TokenAuthority) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        refused = bearer_error(bearer_token(str(metadata.get("authorization", ""))), self.tokens)
        if refused is None:
            return continuation(handler_call_details)
        status, _, message = refused

        def abort(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(_CODES[status], message)

        return grpc.unary_unary_rpc_method_handler(abort)
