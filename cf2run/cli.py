"""The `cf2run` command line.

    cf2run migrate MANIFEST [--only NAME] [--target local|gcp] [--recheck]
    cf2run fleet MANIFEST [--max-parallel N] [--dry-run] [--fanout local|deployments] [--recheck]
    cf2run setup [--pool NAME] [--builds N] [--run-writes-per-minute N]
                 [--results-bucket BUCKET [--manifest M] [--target local|gcp] [--project P] [--region R]]
    cf2run plan MANIFEST [--only NAME] [--target local|gcp]
    cf2run discover --project P [--region R ...] [--filter GLOB] [--out DIR] [--target local|gcp] [--force]
    cf2run rollback SERVICE [--to REVISION] [--manifest M] [--target local|gcp] [--project P] [--region R]
    cf2run demo
    cf2run localcloud serve [--state-dir DIR]
    cf2run localcloud logs SERVICE [--state-dir DIR]
    cf2run localcloud token AUDIENCE [--state-dir DIR]
    cf2run localcloud credentials KIND --out FILE [--account SA] [--state-dir DIR]
    cf2run localcloud add-secret SECRET --data-file FILE|- [--project P] [--state-dir DIR]
    cf2run localcloud create-repository REPO [--project P] [--location L] [--state-dir DIR]
"""

from __future__ import annotations

import os

# Without a Prefect server configured, Prefect starts a temporary one per command; its first
# start (database migrations) can take longer than Prefect's default 20 s on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import contextlib
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cf2run.errors import SpecError
from cf2run.gcp.cloud import default_localcloud_dir
from cf2run.localcloud.iam.accounts import DEFAULT_ACCOUNT as LOCAL_ACCOUNT
from cf2run.prefect_server import TIP, configured_api_url, use_background_server

if TYPE_CHECKING:
    from cf2run.gcp.cloud import Cloud
    from cf2run.manifest.spec import Manifest, Target

app = typer.Typer(help="Migrate Google Cloud Functions to Cloud Run with buildpacks, on Prefect.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
localcloud_app = typer.Typer(help="The embedded local cloud (Cloud Storage, Artifact Registry, "
                                  "Cloud Build, Cloud Run on 127.0.0.1).", no_args_is_help=True)
app.add_typer(localcloud_app, name="localcloud")
server_app = typer.Typer(help="A Prefect server in the background, for the commands and the UI "
                              "(host, port: PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@app.callback()
def _prefect_server() -> None:
    """Migrate Google Cloud Functions to Cloud Run with buildpacks, on Prefect."""
    # Before any command imports Prefect: a server running in the background is used when none
    # is configured (cf2run/prefect_server.py).
    use_background_server()


def _tell_about_the_prefect_server() -> None:
    """The tip, for commands that run flows, when they will start a temporary Prefect server."""
    if configured_api_url() is None:
        typer.secho(f"note: {TIP}", fg="yellow", err=True)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The project examples/gen1's functions are deployed in.
DEMO_PROJECT = "local-project"

StateDir = Annotated[Path | None, typer.Option(
    "--state-dir", help="Where the local cloud keeps its state and endpoints.json "
                        "(default: $CF2RUN_LOCALCLOUD_DIR, else ~/.cf2run/localcloud).",
    show_default=False)]
Recheck = Annotated[bool, typer.Option(
    "--recheck", help="Smoke-test (and compare) unchanged functions too; without it a function "
                      "whose revision serves unchanged is sent no request.")]


@app.command()
def migrate(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest listing the functions.")],
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Migrate only this function (repeatable).")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Override the manifest's target kind: local or gcp.")] = None,
    recheck: Recheck = False,
) -> None:
    """Migrate the functions of a manifest to Cloud Run, one after another."""
    from cf2run import short_process

    with short_process.imports_frozen():
        import flows.migrate_function  # noqa: F401 - what migrate_each runs, frozen with the rest
        from cf2run.report import migrate_each, print_results

    loaded = _load(manifest, only, target)
    _connect(loaded.target)
    _tell_about_the_prefect_server()
    with short_process.without_heartbeats():  # the process is recorded instead (RUN_HOOKS)
        results = migrate_each(loaded.functions, loaded.target, recheck)
    print_results(results, f"cf2run migrate {manifest}")
    short_process.before_exit()
    raise typer.Exit(0 if all(r.status == "succeeded" for r in results) else 1)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the old functions and the new services serving until Ctrl-C.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Keep the discovered manifest and sources here (default: a temporary "
                      "directory, removed at the end).", show_default=False)] = None,
    max_parallel: Annotated[int, typer.Option(
        "--max-parallel", min=1, max=500, help="Functions migrated at the same time.")] = 6,
) -> None:
    """The whole story on the embedded local cloud: the samples in examples/ deployed as the
    project's Cloud Functions (examples/gen1), `discover` writes the manifest, the fleet migrates
    it, and each new service is checked against its old function (parity) before it takes traffic."""
    from cf2run.discovery.report import print_result
    from cf2run.discovery.run import Clients, Request
    from cf2run.discovery.run import discover as run_discover
    from cf2run.localcloud.server import LocalCloud

    with LocalCloud() as cloud:
        typer.echo("deploying the sample functions as the project's Cloud Functions (examples/gen1)...")
        cloud.seed_functions(EXAMPLES / "gen1")
        target = _target(None, "local", DEMO_PROJECT, None).model_copy(
            update={"localcloud_dir": cloud.state_dir})
        clouds = _connect(target)
        request = Request(project=DEMO_PROJECT, out=(out or cloud.state_dir / "discovered").resolve(),
                          kind="local", localcloud_dir=cloud.state_dir, force=True)
        discovered = run_discover(Clients(clouds.functions, clouds.functions_v2, clouds.storage), request)
        print_result(discovered)
        manifest = _load(discovered.manifests[0], None, "local")
        failed = _run_fleet(manifest.model_copy(update={"target": manifest.target.model_copy(
            update={"localcloud_dir": cloud.state_dir})}), max_parallel, "cf2run demo: discover, then fleet")
        if keep:
            typer.echo(f"old functions at {cloud.endpoints.functions}/NAME, new services at the URLs "
                       "above; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    raise typer.Exit(1 if failed else 0)


def _run_fleet(manifest: Manifest, max_parallel: int, title: str, dry_run: bool = False,
               fanout: str = "local", recheck: bool = False) -> list[str]:
    """The migrate-fleet flow over `manifest`, its table printed; returns the functions that failed."""
    from cf2run.fleet.report import FleetReport
    from cf2run.report import print_results
    from flows.migrate_fleet import migrate_fleet

    state = migrate_fleet(manifest, max_parallel=max_parallel, dry_run=dry_run,
                          fanout=fanout, recheck=recheck, return_state=True)  # type: ignore[arg-type]
    report = state.result(raise_on_failure=False)
    if not isinstance(report, FleetReport):
        typer.secho(f"error: the fleet run crashed: {report}", fg="red", err=True)
        raise typer.Exit(1)
    if dry_run:
        _print_rows(report.rows(), f"{title} --dry-run (nothing changed)")
    else:
        print_results(report.results, title)
    typer.echo(report.summary)
    return report.failed


@app.command()
def fleet(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest listing the functions.")],
    max_parallel: Annotated[int, typer.Option(
        "--max-parallel", min=1, max=500, help="Functions migrated at the same time.")] = 20,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only report what would be built and deployed; change nothing.")] = False,
    fanout: Annotated[str, typer.Option(
        "--fanout", help="local: in this process; deployments: one migrate-function "
                         "deployment run per function, taken by any worker on the pool.")] = "local",
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Migrate only this function (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Skip this function (repeatable).")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Override the manifest's target kind: local or gcp.")] = None,
    recheck: Recheck = False,
) -> None:
    """Migrate the functions of a manifest many at a time (the migrate-fleet flow)."""
    if fanout not in ("local", "deployments"):
        raise typer.BadParameter("must be 'local' or 'deployments'", param_hint="--fanout")
    loaded = _load(manifest, None, target)
    try:
        loaded = loaded.select(only, exclude)
    except SpecError as error:
        typer.secho(f"error: {manifest}: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    if fanout == "local":  # with deployments, the workers' credentials are the ones that count
        _connect(loaded.target)
    _tell_about_the_prefect_server()
    failed = _run_fleet(loaded, max_parallel, f"cf2run fleet {manifest}", dry_run, fanout, recheck)
    raise typer.Exit(1 if failed else 0)


@app.command()
def setup(
    pool: Annotated[str, typer.Option("--pool", help="Name of the process work pool.")] = "cf2run",
    builds: Annotated[int | None, typer.Option(
        "--builds", min=1, help="Concurrent Cloud Build builds (your project's quota) "
                                "[default: 10, when the limit is created]", show_default=False)] = None,
    run_writes: Annotated[int | None, typer.Option(
        "--run-writes-per-minute", min=1, help="Cloud Run Admin API writes per minute "
                                               "[default: 60, when the limit is created]",
        show_default=False)] = None,
    results_bucket: Annotated[str | None, typer.Option(
        "--results-bucket", help="Cloud Storage bucket for flow and task results, shared by workers on "
                                 "any machine: created if missing (target's project, region and "
                                 "credentials), a GcsBucket block on it made the server's default "
                                 "result storage.", show_default=False)] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="With --results-bucket: take the target from this manifest.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="With --results-bucket: target kind, local or gcp (default: the "
                         "manifest's, else local).", show_default=False)] = None,
    project: Annotated[str | None, typer.Option(
        "--project", help="With --results-bucket: Google Cloud project id.")] = None,
    region: Annotated[str | None, typer.Option(
        "--region", help="With --results-bucket: the bucket's location.")] = None,
) -> None:
    """Create the work pool and the quota limits (Prefect global concurrency limits) if missing; with
    --results-bucket, the workers' shared result storage on Cloud Storage."""
    from cf2run.errors import Cf2RunError
    from cf2run.fleet.quotas import BUILD_LIMIT, RUN_WRITES_LIMIT, QuotaLimits
    from cf2run.fleet_setup import setup as do_setup

    chosen = None
    if results_bucket is None and (manifest or target or project or region):
        raise typer.BadParameter("--manifest, --target, --project and --region choose where "
                                 "--results-bucket goes; give it too", param_hint="--results-bucket")
    if results_bucket is not None:
        from cf2run.result_storage import check_bucket_name

        try:
            check_bucket_name(results_bucket)
        except SpecError as error:
            typer.secho(f"error: {error}", fg="red", err=True)
            raise typer.Exit(2) from None
        chosen = _target(manifest, target, project, region)
        _connect(chosen)
    given = {"builds": builds, "run_writes_per_minute": run_writes}
    quotas = QuotaLimits(**{name: value for name, value in given.items() if value is not None})
    replace = [name for name, value in ((BUILD_LIMIT, builds), (RUN_WRITES_LIMIT, run_writes))
               if value is not None]
    done = do_setup(pool, quotas, replace)
    if chosen is not None and results_bucket is not None:
        from cf2run.result_storage import setup_result_storage

        try:
            stored, notes = setup_result_storage(chosen, results_bucket)
        except Cf2RunError as error:
            typer.secho(f"error: {error}", fg="red", err=True)
            raise typer.Exit(1) from None
        done += stored
        for note in notes:
            typer.secho(f"note: {note}", fg="yellow")
    typer.echo("\n".join(f"set: {item}" for item in done) if done else "nothing to do: all exist")


def _print_rows(rows: list[dict[str, object]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in rows[0] if rows else ():
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console(width=200).print(table)


def _load(manifest: Path, only: list[str] | None, target: str | None) -> Manifest:
    from cf2run.manifest.spec import load_manifest

    if target not in (None, "local", "gcp"):
        raise typer.BadParameter("must be 'local' or 'gcp'", param_hint="--target")
    try:
        return load_manifest(manifest, only=only or None, target_kind=target)
    except SpecError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error


@app.command()
def plan(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest listing the functions.")],
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Plan only this function (repeatable).")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Override the manifest's target kind: local or gcp.")] = None,
) -> None:
    """Show what a migration would change per function (service, diff, build cached?); change nothing."""
    from cf2run.plan import plan_function, render

    loaded = _load(manifest, only, target)
    cloud = _connect(loaded.target)
    plans = [plan_function(spec, loaded.target, cloud) for spec in loaded.functions]
    typer.echo(render(plans), nl=False)
    raise typer.Exit(2 if any(p.bad_input for p in plans) else 0 if all(p.ok for p in plans) else 1)


@app.command()
def discover(
    project: Annotated[str, typer.Option("--project", help="Project whose functions to discover.")],
    region: Annotated[list[str] | None, typer.Option(
        "--region", help="Only this region (repeatable; default: every region).")] = None,
    name_filter: Annotated[str | None, typer.Option(
        "--filter", help="Only functions whose id matches this glob, e.g. 'orders-*'.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", help="Directory for manifest.yaml and functions/NAME/ (one REGION/ folder each "
                      "when the functions span several regions).")] = Path("discovered"),
    target: Annotated[str, typer.Option(
        "--target", help="Where the API calls go and the manifest's target kind: local or gcp.")] = "local",
    localcloud_dir: Annotated[Path | None, typer.Option(
        "--localcloud-dir", help="For --target local: the local cloud's directory (default: "
                                 "$CF2RUN_LOCALCLOUD_DIR, else ~/.cf2run/localcloud).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite a manifest (or source folder) you edited since the last run.")] = False,
) -> None:
    """Write a manifest from the project's 1st-gen Cloud Functions (settings, source, who may
    invoke them); change nothing in the project."""
    from cf2run.discovery.report import print_result
    from cf2run.discovery.run import Clients, Request
    from cf2run.discovery.run import discover as run_discover
    from cf2run.errors import Cf2RunError

    chosen = _target(None, target, project, region[0] if region else None)
    if localcloud_dir is not None:
        chosen = chosen.model_copy(update={"localcloud_dir": localcloud_dir})
    cloud = _connect(chosen)
    request = Request(project=chosen.project, out=out.resolve(), regions=region or (),
                      name_glob=name_filter, kind=chosen.kind, localcloud_dir=localcloud_dir,
                      force=force)
    try:
        result = run_discover(Clients(cloud.functions, cloud.functions_v2, cloud.storage), request)
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None
    print_result(result)
    if not result.manifests:
        typer.secho("error: no function to migrate (see the table); nothing was written", fg="red", err=True)
        raise typer.Exit(2)


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="Cloud Run service name.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Revision to move the traffic to (default: the one promoted before the "
                     "revision serving now).", show_default=False)] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Take the target (project, region, local cloud) from this manifest.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Target kind: local or gcp (default: the manifest's, else local).",
        show_default=False)] = None,
    project: Annotated[str | None, typer.Option("--project", help="Google Cloud project id.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Cloud Run region.")] = None,
) -> None:
    """Move all of a service's traffic back to the revision that served before (no new revision)."""
    from cf2run.errors import Cf2RunError
    from cf2run.rollback import rollback as do_rollback

    chosen = _target(manifest, target, project, region)
    cloud = _connect(chosen)
    try:
        moved = do_rollback(cloud, chosen, service, to)
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    if moved.changed:
        typer.echo(f"{service}: all traffic moved from {', '.join(moved.previous)} to "
                   f"{', '.join(moved.serving)} at {moved.url}")
    else:
        typer.echo(f"{service}: already serves {', '.join(moved.serving)}; nothing moved")


def _connect(target: Target) -> Cloud:
    """The target's clients, once its credentials are known to do the whole job, the smoke test's ID
    token included (no network call); otherwise one line naming the fix, exit 2, nothing changed."""
    from cf2run.errors import Cf2RunError
    from cf2run.gcp.cloud import Cloud

    try:
        cloud = Cloud.for_target(target)
        cloud.check_identity()
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None
    return cloud


def _target(manifest: Path | None, kind: str | None, project: str | None, region: str | None
            ) -> Target:
    """The manifest's target (or the default one), with the given options over it."""
    from pydantic import ValidationError

    from cf2run.manifest.spec import Target

    base = _load(manifest, None, kind).target if manifest else Target()
    given = {"kind": kind, "project": project, "region": region}
    try:
        return Target.model_validate({**base.model_dump(), **{k: v for k, v in given.items() if v}})
    except ValidationError as error:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}"
                             if e["loc"] else e["msg"] for e in error.errors())
        typer.secho(f"error: {problems}", fg="red", err=True)
        raise typer.Exit(2) from error


@localcloud_app.command("serve")
def localcloud_serve(
    state_dir: StateDir = None,
    seed_functions: Annotated[Path | None, typer.Option(
        "--seed-functions", help="A directory of Cloud Functions (NAME/function.json or function.v2.json, "
                                 "NAME/source/ or source.zip, NAME/iam.json) to serve as the project's "
                                 "deployed functions; 1st-gen HTTP ones answer at FUNCTIONS/NAME.")] = None,
) -> None:
    """Run the local cloud until interrupted; services and functions that were serving come back."""
    from cf2run.errors import Cf2RunError
    from cf2run.localcloud.cloudfunctions.seed import SeedError
    from cf2run.localcloud.server import LocalCloud

    state_dir = state_dir or default_localcloud_dir()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:  # the seed directory is taken before endpoints.json says the cloud runs
        cloud = LocalCloud(state_dir=state_dir).start(seed_functions=seed_functions)
    except SeedError as error:  # a bad seed directory: the user's input
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None
    except Cf2RunError as error:  # another local cloud serves there, a port is taken, ...
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1) from None
    with contextlib.closing(cloud):
        for name in cloud.seeded:
            problem = cloud.cloudfunctions.gen1.problem(name)
            typer.echo(f"function {name}" + (f" (listed, not served: {problem})" if problem else ""))
        for name, address in vars(cloud.endpoints).items():
            typer.echo(f"{name:>14}  {address}")
        typer.echo(f"endpoints written to {state_dir / 'endpoints.json'}; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@localcloud_app.command("logs")
def localcloud_logs(service: Annotated[str, typer.Argument(help="Cloud Run service name.")],
                    state_dir: StateDir = None) -> None:
    """Print what a local Cloud Run service's revisions wrote to stdout and stderr."""
    path = (state_dir or default_localcloud_dir()) / "runtime" / "logs" / f"{service}.log"
    if not path.exists():
        raise typer.BadParameter(f"no logs for service {service!r} in {path.parent}",
                                 param_hint="SERVICE")
    typer.echo(path.read_text(errors="replace"), nl=False)


@localcloud_app.command("token")
def localcloud_token(audience: Annotated[str, typer.Argument(help="The service URL.")],
                     state_dir: StateDir = None) -> None:
    """Print an ID token for a private service of the running local cloud (curl -H "Authorization:
    Bearer TOKEN"); exit 2 when none runs there (a token of a new key would be refused everywhere)."""
    from cf2run.errors import Cf2RunError
    from cf2run.localcloud.endpoints import Endpoints
    from cf2run.localcloud.iam.metadata import TokenAuthority

    directory = state_dir or default_localcloud_dir()
    try:
        Endpoints.running(directory)
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(TokenAuthority(directory).mint(audience))


@localcloud_app.command("credentials")
def localcloud_credentials(
    kind: Annotated[str, typer.Argument(
        help="service_account | authorized_user | impersonated_service_account | external_account")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the credentials file (mode 0600).")],
    account: Annotated[str, typer.Option(
        help="The service account (its key, or the one impersonated).")] = LOCAL_ACCOUNT,
    state_dir: StateDir = None,
) -> None:
    """Write a credentials file of KIND whose token URLs are the running local cloud's, to rehearse a
    credential type: GOOGLE_APPLICATION_CREDENTIALS=FILE and a target credentials_block without a key."""
    import json

    from cf2run.errors import Cf2RunError
    from cf2run.localcloud.iam.accounts import KINDS, Accounts, write_private

    if kind not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}", param_hint="KIND")
    try:
        accounts = Accounts.of(state_dir or default_localcloud_dir())
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None
    write_private(out, json.dumps(accounts.credentials_info(kind, account), indent=2))  # type: ignore[arg-type]
    typer.echo(f"wrote {kind} credentials to {out}")


@localcloud_app.command("add-secret")
def localcloud_add_secret(
    secret: Annotated[str, typer.Argument(help="Secret id, as secret_env and secret_volumes name it.")],
    data_file: Annotated[str, typer.Option(
        "--data-file", help="File holding the value; - reads it from stdin.")],
    project: Annotated[str, typer.Option(help="Project that holds the secret.")] = "local-project",
    state_dir: StateDir = None,
) -> None:
    """Add a version to a local secret (like `gcloud secrets versions add SECRET --data-file FILE`);
    a revision reads it at its next start."""
    from cf2run.localcloud.secretmanager.store import InvalidSecretName, SecretStore

    try:
        data = typer.get_binary_stream("stdin").read() if data_file == "-" else Path(data_file).read_bytes()
    except OSError as error:
        raise typer.BadParameter(f"cannot read {data_file}: {error.strerror}",
                                 param_hint="--data-file") from error
    store = SecretStore.of(state_dir or default_localcloud_dir())
    try:
        version = store.add_version(project, secret, data)
    except InvalidSecretName as error:
        raise typer.BadParameter(str(error), param_hint="SECRET or --project") from error
    typer.echo(f"Created version [{version}] of the secret [{secret}] in project [{project}].")


@localcloud_app.command("create-repository")
def localcloud_create_repository(
    repository: Annotated[str, typer.Argument(help="Repository id, as target.repository names it.")],
    project: Annotated[str, typer.Option(help="Project that holds the repository.")] = "local-project",
    location: Annotated[str, typer.Option(help="Its location, as target.region names it.")] = "us-central1",
    state_dir: StateDir = None,
) -> None:
    """Create a Docker repository in the local Artifact Registry (like `gcloud artifacts repositories
    create REPO --repository-format=docker --location=L`); images go only into repositories that exist."""
    from cf2run.localcloud.registry.repositories import (
        DockerRepositories,
        InvalidRepository,
        RepositoryExists,
    )

    repositories = DockerRepositories.of(state_dir or default_localcloud_dir())
    try:
        repositories.create(project, location, repository)
    except InvalidRepository as error:
        raise typer.BadParameter(str(error), param_hint="REPO, --project or --location") from error
    except RepositoryExists as error:  # gcloud: ERROR: (gcloud.artifacts.repositories.create) ALREADY_EXISTS
        typer.secho(f"ERROR: ALREADY_EXISTS: {error}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Create request issued for: [{repository}]")
    typer.echo(f"Created repository [{repository}].")


@server_app.command("start")
def server_start() -> None:
    """Start a Prefect server that keeps running after this command (log: PREFECT_HOME/server.log);
    cf2run commands without PREFECT_API_URL report to it."""
    from cf2run import background_server
    from cf2run.errors import Cf2RunError

    try:
        background_server.refuse_if_running()
        typer.echo("starting a Prefect server in the background (the first start migrates its "
                   "database: up to a minute)...")
        server = background_server.start()
    except Cf2RunError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Prefect server running in the background (PID {server.pid}; log {server.log})\n"
               f"  API: {server.api_url}\n  UI:  {server.ui_url}\n"
               f"cf2run commands with this PREFECT_HOME use it; elsewhere (a worker, another "
               f"profile) set:\n  export PREFECT_API_URL={server.api_url}\n"
               "Stop it with `cf2run server stop`.")
    configured = configured_api_url()
    if configured and configured != server.api_url:
        typer.secho(f"note: PREFECT_API_URL is {configured}: cf2run commands report there, "
                    "not to this server, until it is unset", fg="yellow", err=True)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the Prefect server `cf2run server start` started."""
    from cf2run import background_server

    pid = background_server.stop()
    typer.echo(f"stopped the Prefect server (PID {pid})" if pid is not None
               else "no Prefect server was running in the background")


@server_app.command("status")
def server_status() -> None:
    """Whether the server `cf2run server start` started runs and answers (exit 1 when not)."""
    from cf2run import background_server
    from cf2run.prefect_server import answers

    server = background_server.running()
    if server is None:
        typer.echo("no Prefect server running in the background (`cf2run server start` starts one)")
        raise typer.Exit(1)
    state = "answers" if answers(server.api_url) else "does NOT answer"
    typer.echo(f"Prefect server PID {server.pid} {state} at {server.api_url} (UI {server.ui_url}; "
               f"log {server.log})")
    raise typer.Exit(0 if state == "answers" else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
