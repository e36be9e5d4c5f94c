"""``modelplane token …``: create, list and revoke API tokens (admin only)."""

from __future__ import annotations

import re

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, print_table

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
    if model is not None and role != "trainer":
        raise typer.BadParameter("only a trainer token is limited to one model; add "
                                 "--role trainer or leave --model out", param_hint="--model")
    if model is not None and not re.fullmatch(NAME_PATTERN, model):
        raise typer.BadParameter(f"model {model!r} is not a model name: letters, digits, '.', "
                                 "'_', '-'", param_hint="--model")
    created = client(url).create_token(name, role, expires_in_days=expires_in_days,
                                       subject=subject, model=model)
    emit(as_json, created, lambda: typer.echo(
        f"{created.token}\n(token {name!r}, role {role}, subject {created.info.subject!r}"
        + (f", model {model!r} only" if model else "") + "; shown once: store it now)"))


@app.command("list")
def list_tokens(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """List tokens (never their secrets)."""
    tokens = client(url).list_tokens()
    emit(as_json, tokens, lambda: print_table(
        "tokens", ["name", "role", "subject", "model", "prefix", "created_by", "expires",
                   "revoked", "last_used"],
        [[t.name, t.role, t.subject, t.model or "", t.prefix + "…", t.created_by, t.expires_at,
          t.revoked_at, t.last_used_at] for t in tokens],
    ))


@app.command()
def revoke(name: str = typer.Argument(..., help="Token name."), url: str | None = UrlOption) -> None:
    """Revoke a token; calls with it fail from now on."""
    client(url).revoke_token(name)
    typer.echo(f"revoked {name}")
