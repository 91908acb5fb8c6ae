"""`export`, `import` and `verify`: bundles that cross an air gap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..bundle_trust import Evidence
from ..errors import MlcacheError
from ..progress import human_size
from ..settings import env_path
from ..signing import keygen as make_keys
from ..signing import load_trusted_keys
from .artifacts import parse_json
from .core import JsonOption, app, data, json_line, note, settings, status

TrustedKeysOption = Annotated[
    Path | None,
    typer.Option("--trusted-keys", help="Public key file or folder (default: MLCACHE_TRUSTED_KEYS): refuse the rest."),
]
ReportOption = Annotated[
    Path | None, typer.Option("--report", help="Write the evidence of what was checked to this JSON file.")
]


@app.command()
def keygen(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder for the new key pair.")] = Path("."),
    name: Annotated[str, typer.Option("--name", help="File name of the pair: NAME.key and NAME.pub.")] = (
        "mlcache-signing"
    ),
) -> None:
    """Write a new EC P-256 signing key pair (the private key readable by you alone)."""
    private, public = make_keys(out, name)
    data(str(private))
    data(str(public))
    note(ctx, f"sign with --sign-key {private} (or MLCACHE_SIGNING_KEY); give {public} to those who verify")


@app.command()
def export(
    ctx: typer.Context,
    items: Annotated[
        list[str] | None, typer.Argument(help="models:/name/3, models:/name@alias, m-<id>, runs:/id/path, exp:<id>")
    ] = None,
    to: Annotated[Path, typer.Option("--to", help="A new bundle folder, or a .tar / .tar.gz archive.")] = Path(
        "bundle"
    ),
    query: Annotated[
        str | None, typer.Option("--query", help="Also every model version matching this JSON query.")
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option("--base", help="An older bundle (folder, archive or its bundle.json): hold only what it lacks."),
    ] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option("--sign-key", help="Sign with this private key (default: MLCACHE_SIGNING_KEY; `mlcache keygen`)."),
    ] = None,
    with_requirements: Annotated[
        bool,
        typer.Option(
            "--with-requirements",
            help="Also the wheels each MLflow model's requirements.txt names (pip download, this machine's platform).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Export model versions, runs and experiments with everything needed offline into a bundle
    (with --base, a differential one that needs the base's blobs where it is imported; with
    --with-requirements, the wheels to build each model's environment with no index)."""
    from ..bundle import selection_from

    selection = selection_from(items or [])
    version_query = parse_json(query, "--query") if query else None
    api = settings(ctx).api()
    status(ctx, f"exporting to {to}")
    path = api.export_bundle(
        to,
        selection.model_versions,
        selection.runs,
        selection.experiments,
        version_query,
        base=base,
        sign_key=sign_key,
        with_requirements=with_requirements,
    )
    if as_json:
        json_line({"bundle": str(path)})
    else:
        data(str(path))


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Bundle folder or archive.")],
    trusted_keys: TrustedKeysOption = None,
    evidence_file: ReportOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle and bring it into the cache (with trusted keys, only what they signed)."""
    api = settings(ctx).api()
    status(ctx, f"importing {source}")
    evidence = Evidence("import", str(source))
    try:
        report = api.import_bundle(source, trusted_keys=trusted_keys, evidence=evidence)
    except MlcacheError as exc:
        if evidence_file is not None:
            evidence.problems = evidence.problems or [str(exc)]
            note(ctx, f"evidence written to {evidence.write(evidence_file)}")
        raise
    if evidence_file is not None:
        note(ctx, f"evidence written to {evidence.write(evidence_file)}")
    if as_json:
        json_line(
            {
                "added": report.entries_added,
                "present": report.entries_present,
                "metadata_written": report.metadata_written,
                "metadata_kept": report.metadata_kept,
            }
        )
        return
    data(
        f"imported {len(report.entries_added)} artifact entries ({len(report.entries_present)} already present), "
        f"{report.metadata_written} metadata documents ({report.metadata_kept} kept)"
    )


@app.command()
def verify(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Argument(help="Bundle (folder or archive) or cache dir; default: the cache.")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Pull bad entries of the cache again (or import them --from a bundle).")
    ] = False,
    source: Annotated[
        Path | None, typer.Option("--from", help="With --repair: the bundle to import bad entries from.")
    ] = None,
    trusted_keys: TrustedKeysOption = None,
    evidence_file: ReportOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-hash every file of a bundle or cache; list each bad file; exit 1 if any."""
    from ..bundle_verify import verify_report

    if source is not None and not repair:
        raise typer.BadParameter("--from goes with --repair")
    api = settings(ctx).api() if path is None or repair else None
    target: Path = path if path is not None else api.cache_dir  # type: ignore[union-attr]
    if repair:
        if api is None or target.absolute() != api.cache_dir.absolute():
            raise typer.BadParameter("--repair works on the cache (leave out PATH, or give --cache-dir)")
        repaired = api.repair_cache(source)
        for label in repaired.repaired:
            data(f"repaired {label}")
        for failure in repaired.failed:
            note(ctx, f"not repaired: {failure}")
    status(ctx, f"verifying {target}")
    keys = trusted_keys or env_path("MLCACHE_TRUSTED_KEYS")
    trusted = load_trusted_keys(keys) if keys is not None else None
    checked = verify_report(target, trusted=trusted)
    problems = checked.problems
    if evidence_file is not None:
        evidence = Evidence("verify", str(target), checked.tree, trusted or [], checked.signatures, problems)
        note(ctx, f"evidence written to {evidence.write(evidence_file)}")
    if checked.tree is not None and not trusted:
        signer = checked.signed_by
        note(ctx, f"signed by key {signer} (not checked: no trusted keys)" if signer else "not signed")
    base = checked.base
    if base is not None:
        note(
            ctx,
            f"differential bundle: relies on {base.name} (bundle.json sha256 {base.digest}) for "
            f"{len(checked.relies)} blobs, {human_size(sum(checked.relies.values()))}, that it does not hold",
        )
    if as_json:
        line: dict = {"path": str(target), "ok": not problems, "problems": problems}
        if base is not None:
            line["base"] = {"name": base.name, "digest": base.digest, "relies_on": len(checked.relies)}
        json_line(line)
    else:
        for problem in problems:
            data(f"BAD {problem}")
        if not problems:
            data(f"OK {target}")
    if problems:
        note(ctx, f"{len(problems)} problem(s) in {target}")
        raise typer.Exit(1)
