"""``modelplane token …``: create, list and revoke API tokens (admin only)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, print_table

if TYPE_CHECKING:
    from control_plane.schemas import TokenOut

app = typer.Typer(help="API tokens with roles: reader, labeler (a label source), deployer, approver, admin (and trainer, a training job's).",
                  no_args_is_help=True)


@app.command()
def create(
    name: str = typer.Argument(..., help="Who or what the token is for; recorded as the actor."),
    role: str = typer.Option("reader", help="reader, labeler (posts feedback), deployer, approver or admin; trainer for a training job (its own runs, versions, and aliases on them)."),
    expires_in_days: int | None = typer.Option(None, min=1, help="Expire after N days."),
    subject: str | None = typer.Option(
        None, help="The person or service the token is issued to (default: NAME). Give all of "
                   "one person's tokens the same subject: approvals compare subjects."),
    model: str | None = typer.Option(
        None, help="For a trainer token: the one model whose versions it registers and whose "
                   "aliases it points (what `train submit` gives a job's token)."),
    endpoint: str | None = typer.Option(
        None, help="For a labeler token: the one endpoint whose feedback it posts, so a "
                   "leaked label source's token steers no other endpoint's accuracy gate."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Create a token; its secret is printed once and stored only hashed."""
    from control_plane.schemas import NAME_PATTERN, Role

    if role not in {r.value for r in Role}:
        raise typer.BadParameter(f"role {role!r} is not one of {', '.join(r.value for r in Role)}")
    if subject is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", subject):
        raise typer.BadParameter(
            f"subject {subject!r} is not valid: up to 128 letters, digits, '.', '_', '@', '+', "
            "'-', starting with a letter or digit (e.g. alice or alice@example.com)",
            param_hint="--subject")
    _check_limit("model", model, role, "trainer", NAME_PATTERN)
    _check_limit("endpoint", endpoint, role, "labeler", NAME_PATTERN)
    created = client(url).create_token(name, role, expires_in_days=expires_in_days,
                                       subject=subject, model=model, endpoint=endpoint)
    limited = (f", model {model!r} only" if model else "") + (
        f", endpoint {endpoint!r} only" if endpoint else "")
    emit(as_json, created, lambda: typer.echo(
        f"{created.token}\n(token {name!r}, role {role}, subject {created.info.subject!r}"
        f"{limited}; shown once: store it now)"))


@app.command("list")
def list_tokens(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """List tokens (never their secrets)."""
    tokens = client(url).list_tokens()
    emit(as_json, tokens, lambda: print_table(
        "tokens", ["name", "role", "subject", "only", "prefix", "created_by", "expires",
                   "revoked", "last_used"],
        [[t.name, t.role, t.subject, _limited_to(t), t.prefix + "…", t.created_by,
          t.expires_at, t.revoked_at, t.last_used_at] for t in tokens],
    ))


def _check_limit(kind: str, value: str | None, role: str, limited_role: str,
                 pattern: str) -> None:
    """A token's one model or endpoint: only a ``limited_role`` token names one, by name."""
    if value is None:
        return
    if role != limited_role:
        raise typer.BadParameter(f"only a {limited_role} token is limited to one {kind}; add "
                                 f"--role {limited_role} or leave --{kind} out",
                                 param_hint=f"--{kind}")
    if not re.fullmatch(pattern, value):
        raise typer.BadParameter(f"{kind} {value!r} is not a{'n' if kind[0] in 'aeiou' else ''} "
                                 f"{kind} name: letters, digits, '.', '_', '-'",
                                 param_hint=f"--{kind}")


def _limited_to(token: TokenOut) -> str:
    """The one model (a trainer's) or endpoint (a labeler's) a token acts on; empty: any."""
    if token.model:
        return f"model {token.model}"
    return f"endpoint {token.endpoint}" if token.endpoint else ""


@app.command()
def revoke(name: str = typer.Argument(..., help="Token name."), url: str | None = UrlOption) -> None:
    """Revoke a token; calls with it fail from now on."""
    client(url).revoke_token(name)
    typer.echo(f"revoked {name}")
