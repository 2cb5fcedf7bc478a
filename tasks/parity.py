"""parity: does the new revision answer like the old function? Run after the smoke test passed,
before promote.

The smoke request (for a function with a trigger: the event the smoke test sends, one event for
both sides) and every `parity.requests` entry go to the old function (`parity.old_url` + the
request's path, with an ID token whose audience is old_url) and to the candidate (its tag URL,
with an ID token for the service), each through the smoke test's loop that waits out cold
starts; the answers are compared as cf2run/parity.py does. An event function whose old function
is named (`parity.old_function`) gets the event's data through the Cloud Functions v1
CallFunction (gen1 background functions have no URL); the new revision gets the event itself;
each must accept it.

A difference fails the task (`ParityDiffers`; the flow discards the candidate) unless the
manifest says `on_difference: warn`. Only transient errors (an API's UNAVAILABLE, a token
endpoint's 503) are retried. Never cached: it compares what serves now.
"""

from __future__ import annotations

import json

from google.api_core import exceptions as api_exceptions
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run import events
from cf2run.errors import ParityDiffers
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.spec import FunctionSpec, SmokeRequest, Target
from cf2run.parity import Answer, acceptance_difference, differences
from cf2run.results import Deployment, ParityResult, RequestParity
from tasks.deploy import Log, log
from tasks.policy import RETRIES, is_transient
from tasks.smoke import request_for, request_headers, request_url, send_until_warm


def ask(base_url: str, request: SmokeRequest, token: str, headers: list[str],
        logger: Log = log) -> Answer:
    """`request` sent to `base_url` (retried through cold starts until its deadline); the answer
    with the `headers` parity compares."""
    attempts = send_until_warm(request_url(base_url, request.path), request,
                               request_headers(request, token), log=logger.info)
    response = attempts.response
    if response is None:
        return Answer(status=None, error=f"{attempts.error} after {attempts.count} attempts")
    return Answer(status=response.status_code, body=response.content,
                  headers={name: response.headers.get(name) for name in headers})


def described(request: SmokeRequest) -> str:
    """How a report names a request: ``GET /orders``, or ``event TYPE`` for a CloudEvent."""
    event_type = request.headers.get("ce-type")
    return f"event {event_type}" if event_type else f"{request.method} {request.path}"


def compare_over_http(cloud: Cloud, spec: FunctionSpec, target: Target, deployment: Deployment,
                      logger: Log = log) -> ParityResult:
    """Every request to the old URL and to the candidate, answers compared."""
    check = spec.parity
    old_url = check.old_url or ""
    old_token, new_token = cloud.id_token(old_url), cloud.id_token(deployment.url)
    first, _ = request_for(spec, target)
    compared = []
    for request in [first, *check.requests]:
        old = ask(old_url, request, old_token, check.headers, logger)
        new = ask(deployment.smoke_url, request, new_token, check.headers, logger)
        compared.append(RequestParity(request=described(request), old=old.describe(),
                                      new=new.describe(), diff=differences(old, new, check)))
    return ParityResult(old=old_url, compare=check.compare, requests=compared)


def compare_event(cloud: Cloud, spec: FunctionSpec, target: Target, deployment: Deployment,
                  logger: Log = log) -> ParityResult:
    """The smoke event to the candidate, its data to the old function through CallFunction;
    each must accept it."""
    name = spec.parity.old_function or ""
    if spec.trigger is not None:
        event = events.smoke_event(spec, target)
        request, data = events.smoke_request(spec, target, event), events.gen1_data(spec, event[1])
    else:  # an event function without a trigger: the smoke request's body is the event's data
        request = spec.smoke
        data = request.json_body if request.json_body is not None else json.loads(request.body or "{}")
    old_error = call_old_function(cloud, name, json.dumps(data))
    new = ask(deployment.smoke_url, request, cloud.id_token(deployment.url), [], logger)
    diff = acceptance_difference(old_error, new)
    compared = RequestParity(request=described(request), new=new.describe(), diff=[diff] if diff else [],
                             old="accepted" if old_error is None else f"error {old_error}")
    return ParityResult(old=name, compare="accepted", requests=[compared])


def call_old_function(cloud: Cloud, name: str, data: str) -> str | None:
    """The old function called with `data` (v1 CallFunction): None when it accepted it, else its
    error, or the API's refusal (not found, permission denied). Transient API errors are raised,
    for the task's retries."""
    try:
        response = cloud.functions.call_function(name=name, data=data)
    except api_exceptions.GoogleAPICallError as error:
        if is_transient(error):
            raise
        return f"CallFunction refused it: {type(error).__name__}: {error.message}"
    return response.error or None


def parity(cloud: Cloud, spec: FunctionSpec, target: Target, deployment: Deployment,
           logger: Log = log) -> ParityResult:
    """The old function and the candidate compared (`ParityDiffers` when they differ and the
    manifest does not make that a warning)."""
    compare = compare_event if spec.parity.old_function else compare_over_http
    result = compare(cloud, spec, target, deployment, logger)
    for request in result.requests:
        logger.info("parity %s: old %s, new %s: %s", request.request, request.old, request.new,
                    "same" if request.same else "; ".join(request.diff))
    if result.same:
        return result
    differing = sum(1 for request in result.requests if not request.same)
    what = (f"parity with {result.old}: {differing} of {len(result.requests)} request(s) answered "
            f"differently: {'; '.join(result.diffs)}")
    if spec.parity.on_difference == "warn":
        logger.warning("%s (parity.on_difference: warn: promoted anyway)", what)
        return result.model_copy(update={"warned": True})
    raise ParityDiffers(what, result=result, hint=(
        "make the new build answer as the old function does; if the difference is intended, "
        "narrow parity.compare, json_fields or headers, or set parity.on_difference: warn"))


@task(name="parity", task_run_name="parity[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def parity_check(spec: FunctionSpec, target: Target, deployment: Deployment) -> ParityResult:
    """See `parity`."""
    return parity(Cloud.for_target(target), spec, target, deployment, get_run_logger())
