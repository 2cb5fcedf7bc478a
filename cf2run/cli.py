"""The `cf2run` command line.

    cf2run migrate MANIFEST [--only NAME] [--target local|gcp]
    cf2run demo
    cf2run localcloud serve [--state-dir DIR]
    cf2run localcloud logs SERVICE [--state-dir DIR]
    cf2run localcloud token AUDIENCE [--state-dir DIR]
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cf2run.cloud import default_localcloud_dir
from cf2run.errors import SpecError

if TYPE_CHECKING:
    from cf2run.spec import Manifest

app = typer.Typer(help="Migrate Google Cloud Functions to Cloud Run with buildpacks, on Prefect.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
localcloud_app = typer.Typer(help="The embedded local cloud (Cloud Storage, Artifact Registry, "
                                  "Cloud Build, Cloud Run on 127.0.0.1).", no_args_is_help=True)
app.add_typer(localcloud_app, name="localcloud")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

StateDir = Annotated[Path | None, typer.Option(
    "--state-dir", help="Where the local cloud keeps its state and endpoints.json "
                        "[default: $CF2RUN_LOCALCLOUD_DIR or ~/.cf2run/localcloud].",
    show_default=False)]


@app.command()
def migrate(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest listing the functions.")],
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Migrate only this function (repeatable).")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Override the manifest's target kind: local or gcp.")] = None,
) -> None:
    """Migrate the functions of a manifest to Cloud Run, one after another."""
    from cf2run.report import migrate_each, print_results

    loaded = _load(manifest, only, target)
    results = migrate_each(loaded.functions, loaded.target)
    print_results(results, f"cf2run migrate {manifest}")
    raise typer.Exit(0 if all(r.status == "succeeded" for r in results) else 1)


@app.command()
def demo(keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the services serving until Ctrl-C.")] = False) -> None:
    """Start a local cloud and migrate the sample functions in examples/ onto it."""
    from cf2run.localcloud.server import LocalCloud
    from cf2run.report import migrate_each, print_results

    manifest = _load(EXAMPLES / "manifest.yaml", None, "local")
    with LocalCloud() as cloud:
        target = manifest.target.model_copy(update={"localcloud_dir": cloud.state_dir})
        results = migrate_each(manifest.functions, target)
        print_results(results, "cf2run demo (embedded local cloud)")
        if keep:
            typer.echo("serving; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    raise typer.Exit(0 if all(r.status == "succeeded" for r in results) else 1)


def _load(manifest: Path, only: list[str] | None, target: str | None) -> Manifest:
    from cf2run.spec import load_manifest

    if target not in (None, "local", "gcp"):
        raise typer.BadParameter("must be 'local' or 'gcp'", param_hint="--target")
    try:
        return load_manifest(manifest, only=only or None, target_kind=target)
    except SpecError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error


@localcloud_app.command("serve")
def localcloud_serve(state_dir: StateDir = None) -> None:
    """Run the local cloud until interrupted; services that were serving come back."""
    from cf2run.localcloud.server import LocalCloud

    state_dir = state_dir or default_localcloud_dir()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalCloud(state_dir=state_dir) as cloud:
        for name, address in vars(cloud.endpoints).items():
            typer.echo(f"{name:>10}  {address}")
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
    """Print an ID token for a private local service (curl -H "Authorization: Bearer TOKEN")."""
    from cf2run.localcloud.metadata import TokenAuthority

    typer.echo(TokenAuthority(state_dir or default_localcloud_dir()).mint(audience))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
