"""`selftest`: load every model of a bundle in a process with no network, before it is shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .bundles import TrustedKeysOption
from .core import JsonOption, app, data, json_line, note, status


@app.command()
def selftest(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar / .tar.gz archive.")],
    base: Annotated[
        Path | None, typer.Option("--base", help="For a differential bundle: the bundle it was made over.")
    ] = None,
    trusted_keys: TrustedKeysOption = None,
    load_timeout: Annotated[
        float | None,
        typer.Option("--load-timeout", metavar="SECONDS", min=1.0, help="Give up on the loads after this long."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import a bundle into an empty temporary cache and, in a process with no network and no
    tracking server, resolve every model version and alias in it and load each MLflow model with
    mlflow.pyfunc.load_model (other files are read back), in the environment built from the
    bundle's wheels with no index when it was exported --with-requirements; exit 1 unless all load."""
    from ..selftest import SelftestRow
    from ..selftest import selftest as run_selftest

    def show(row: SelftestRow) -> None:
        if as_json:
            line = {"uri": row.uri, "ok": row.ok, "detail": row.detail}
            json_line({**line, "environment": row.environment} if row.environment else line)
        else:
            shown = f"ok {row.uri}" + (f" ({row.environment})" if row.environment else "")
            data(shown if row.ok else f"FAIL {row.uri}: {row.detail}")

    status(ctx, f"importing {bundle} into a temporary cache and loading its models with no network")
    report = run_selftest(bundle, base=base, trusted_keys=trusted_keys, on_row=show, timeout=load_timeout)
    for uri, why in report.skipped:
        if as_json:
            json_line({"uri": uri, "skipped": True, "detail": why})
        else:
            note(ctx, f"skipped {uri}: {why}")
    loaded, failed = len(report.rows) - len(report.failed), len(report.failed)
    if as_json:
        json_line(
            {
                "total": {
                    "ok": report.ok,
                    "loaded": loaded,
                    "failed": failed,
                    "skipped": len(report.skipped),
                    "network_isolation": report.network_isolation,
                }
            }
        )
    if not report.rows:
        note(ctx, f"nothing to load: {bundle} holds no model versions or run artifacts")
    else:
        note(ctx, f"{loaded} of {len(report.rows)} loaded, {failed} failed (no network: {report.network_isolation})")
    if not report.ok:
        raise typer.Exit(1)
