"""API tokens: created with a role, stored hashed, expiring and revocable.

Roles are ordered: ``reader`` < ``labeler`` < ``deployer`` < ``approver`` < ``admin``; each
has the powers of those before it (``labeler``, for label sources, adds posting ground truth
to ``/v2/models/{e}/feedback``: one endpoint's where the token names it). Narrow roles sit
beside the ladder: a reader's reads plus the calls that name them (``trainer``: what a
training job does, see :data:`TRAINING`). A token's name is the principal recorded as the
actor of what it does; its subject is the person or service it was issued to (default: the
name). Rules about people, such as "the approver is not the registrant", compare subjects,
so one person holding two tokens is still one person.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from control_plane.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from control_plane.schemas import Role, TokenCreate, TokenCreated, TokenOut
from control_plane.store import Database
from control_plane.store.models import TokenRow

# Narrow roles rank as readers; calls open to them say so with ``require(..., also=…)``.
_RANK = {Role.READER: 0, Role.TRAINER: 0, Role.LABELER: 1, Role.DEPLOYER: 2, Role.APPROVER: 3,
         Role.ADMIN: 4}
# Who may track runs, upload artifacts, register versions and move aliases besides deployers.
TRAINING = frozenset({Role.TRAINER})
log = logging.getLogger(__name__)

TOKEN_PREFIX = "mp_"
LAST_USED_EVERY_S = 60.0  # how stale a token's last_used_at may be before it is written
MAX_NOTED_TOKENS = 10_000
ADMIN_TOKEN_NAME = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role, and the subject it was issued to."""

    name: str
    role: Role
    subject: str = ""  # empty: the name stands for the subject (built-in principals)
    model: str | None = None  # a trainer token's one model (None: any)
    endpoint: str | None = None  # a labeler token's one endpoint (None: any)

    def __post_init__(self) -> None:
        if not self.subject:
            object.__setattr__(self, "subject", self.name)

    def require(self, role: Role, *, also: frozenset[Role] = frozenset()) -> None:
        """Raise PermissionDeniedError unless this principal has at least ``role`` or is
        one of the narrow roles in ``also``."""
        if self.role not in also and _RANK[self.role] < _RANK[role]:
            raise PermissionDeniedError(
                f"token {self.name!r} has role {self.role.value}; this needs {role.value} "
                "or higher (ask an admin for a token: `modelplane token create`)",
                detail={"required_role": role.value, "role": self.role.value},
            )


ANONYMOUS = Principal(name="anonymous", role=Role.READER)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenService:
    """Create, check, list and revoke API tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._noting = threading.Lock()
        self._noted: dict[str, datetime] = {}  # token name → last use this process wrote

    def create(self, spec: TokenCreate, actor: Principal) -> TokenCreated:
        """A new token. Admins mint any; a deployer may mint an expiring ``trainer`` token
        (a training job's, whose rights are a subset of the deployer's own)."""
        if spec.role is Role.TRAINER and (spec.expires_in_days or spec.expires_in_minutes):
            actor.require(Role.DEPLOYER)
        else:
            actor.require(Role.ADMIN)
        expires = None
        if spec.expires_in_days:
            expires = datetime.now(UTC) + timedelta(days=spec.expires_in_days)
        elif spec.expires_in_minutes:
            expires = datetime.now(UTC) + timedelta(minutes=spec.expires_in_minutes)
        with self._db.session() as session:
            if session.scalar(select(TokenRow.id).where(TokenRow.name == spec.name)):
                raise AlreadyExistsError(
                    f"a token named {spec.name!r} exists; pick another name or revoke it",
                    detail={"field": "name"},
                )
            # Only an admin issues tokens to someone else: a token a deployer mints (a
            # training job's) acts for the deployer, so what it registers is theirs; so does
            # an admin's trainer token unless the admin names another subject.
            if actor.role is Role.ADMIN:
                subject = spec.subject or (
                    actor.subject if spec.role is Role.TRAINER else spec.name)
            else:
                subject = actor.subject
            if spec.subject and spec.subject != subject:
                raise PermissionDeniedError(
                    f"only an admin issues tokens to another subject; {actor.name!r} mints "
                    f"tokens for its own subject {actor.subject!r} (omit subject)",
                    detail={"field": "subject"})
            if actor.role is not Role.ADMIN:
                # A job's token lives no longer than the token that minted it (it is
                # refused once that one expires: see authenticate).
                own = session.scalar(select(TokenRow.expires_at).where(TokenRow.name == actor.name))
                if own is not None:
                    expires = own if expires is None else min(expires, own)
            secret, row = _new_token(spec.name, spec.role, actor.name, expires, subject=subject)
            row.model, row.endpoint = spec.model, spec.endpoint
            session.add(row)
            session.flush()
            return TokenCreated(token=secret, info=_token_out(row))

    def authenticate(self, secret: str) -> Principal:
        """The principal a bearer token stands for; raise if unknown, revoked or expired."""
        now = datetime.now(UTC)
        with self._db.session(readonly=True) as session:
            row = session.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(secret)))
            if row is None:
                raise AuthenticationError(
                    "the bearer token is not known; check MODELPLANE_TOKEN or ask an admin "
                    "for a new one (`modelplane token create`)"
                )
            if row.revoked_at is not None:
                raise AuthenticationError(f"token {row.name!r} was revoked; ask an admin for a new one")
            if row.expires_at is not None and row.expires_at <= now:
                raise AuthenticationError(
                    f"token {row.name!r} expired at {row.expires_at.isoformat()}; ask an admin "
                    "for a new one"
                )
            if row.role == Role.TRAINER.value:
                # A job's token acts for whoever minted it (its subject is theirs): revoking
                # a leaked deployer token must also end the job tokens it minted, whatever
                # their lifetime. One an admin issued to someone else is not the admin's.
                minter = session.execute(
                    select(TokenRow.revoked_at, TokenRow.expires_at, TokenRow.subject).where(
                        TokenRow.name == row.created_by)).first()
                if minter is not None and \
                        (minter.subject or row.created_by) == (row.subject or row.name):
                    if minter.revoked_at is not None:
                        raise AuthenticationError(
                            f"token {row.name!r} was minted by token {row.created_by!r}, which "
                            "was revoked; ask an admin for a new one")
                    if minter.expires_at is not None and minter.expires_at <= now:
                        raise AuthenticationError(
                            f"token {row.name!r} was minted by token {row.created_by!r}, which "
                            f"expired at {minter.expires_at.isoformat()}; ask an admin "
                            "for a new one")
            principal = Principal(name=row.name, role=Role(row.role),
                                  subject=row.subject or row.name, model=row.model,
                                  endpoint=row.endpoint)
            last_used = row.last_used_at
        if last_used is None or (now - last_used).total_seconds() >= LAST_USED_EVERY_S:
            self._note_use(principal.name, now)
        return principal

    def _note_use(self, name: str, now: datetime) -> None:
        """Keep when the token was last used (to the minute: one write a minute per token
        from this process at most), so unused or leaked ones show. Written off the call's
        thread: a call never waits on the store's write lock for it, and a store that
        cannot take it fails no call."""
        with self._noting:
            noted = self._noted.get(name)
            if noted is not None and (now - noted).total_seconds() < LAST_USED_EVERY_S:
                return
            self._noted[name] = now
            if len(self._noted) > MAX_NOTED_TOKENS:
                self._noted.pop(next(iter(self._noted)))

        def write() -> None:
            try:
                with self._db.session() as session:
                    session.execute(update(TokenRow).where(TokenRow.name == name)
                                    .values(last_used_at=now))
            except Exception as error:
                log.debug("could not note token %s as used: %s", name, error)

        threading.Thread(target=write, name="token-last-used", daemon=True).start()

    def list(self) -> list[TokenOut]:
        with self._db.session(readonly=True) as session:
            rows = session.scalars(select(TokenRow).order_by(TokenRow.id)).all()
            return [_token_out(row) for row in rows]

    def revoke(self, name: str, actor: Principal, *, role: Role | None = None) -> TokenOut:
        """Revoke a token: admins any; any token itself (a job ending); a deployer the
        trainer tokens it minted (``train stop`` / ``train status`` after a job ended).
        ``role``: only a token of that role (ConflictError for another)."""
        if actor.name != name:
            actor.require(Role.DEPLOYER)
        with self._db.session() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.name == name))
            if actor.name != name and _RANK[actor.role] < _RANK[Role.ADMIN] and (
                    row is None or row.role != Role.TRAINER.value or row.created_by != actor.name):
                actor.require(Role.ADMIN)
            if row is None:
                raise NotFoundError(f"no token named {name!r}", detail={"field": "name"})
            if role is not None and row.role != role.value:
                raise ConflictError(f"token {name!r} is a {row.role} token, not a {role.value} "
                                    "token", detail={"field": "name"})
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return _token_out(row)

    def bootstrap_admin(self, token_path: Path) -> str | None:
        """On first start, create the admin token and write it to ``token_path`` (mode 0600).

        Returns the new secret, or None when an active admin token already exists.
        """
        with self._db.session() as session:
            # Control planes starting together (two or more on PostgreSQL) must not each see
            # no admin and each write the token file: the file would end up holding a secret
            # whose row was never committed.
            self._db.serialize(session, "bootstrap-admin-token")
            existing = session.scalar(
                select(TokenRow.id).where(
                    TokenRow.role == Role.ADMIN.value, TokenRow.revoked_at.is_(None)
                )
            )
            if existing is not None:
                return None
            # Every bootstrapped admin token stands for the same operator, whatever its name.
            return _mint_into_file(session, token_path, ADMIN_TOKEN_NAME, Role.ADMIN,
                                   "bootstrap", subject=ADMIN_TOKEN_NAME)

    def kept_token(self, path: Path, *, name: str, role: Role, created_by: str) -> tuple[str, bool]:
        """The token kept in ``path`` while it is still an active ``role`` token, else a new
        one (named ``name``, or ``name`` with a suffix when taken) written there; returns
        the secret and whether it is new. Serialized like :meth:`bootstrap_admin`."""
        with self._db.session() as session:
            self._db.serialize(session, f"kept-token:{name}")
            try:
                kept = path.read_text().strip()
            except OSError:
                kept = ""
            if kept:
                row = session.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(kept)))
                if row is not None and row.role == role.value and row.revoked_at is None and (
                        row.expires_at is None or row.expires_at > datetime.now(UTC)):
                    return kept, False
            return _mint_into_file(session, path, name, role, created_by), True


def _mint_into_file(session: Session, path: Path, name: str, role: Role, created_by: str, *,
                    subject: str | None = None) -> str:
    """Add a new token to ``session`` and write its secret to ``path``, last before the
    commit: if the file cannot be written the row is rolled back, so no token exists that
    nobody can read (a commit that fails after it leaves a file with no row, which the
    next start replaces). The row is flushed first, so a name another writer took fails
    here, before the file is touched."""
    taken = set(session.scalars(select(TokenRow.name).where(TokenRow.name.startswith(name))))
    unique = name
    while unique in taken:
        unique = f"{name}-{secrets.token_hex(3)}"
    secret, row = _new_token(unique, role, created_by, None, subject=subject)
    session.add(row)
    session.flush()
    write_secret_file(path, secret)
    return secret


def _new_token(name: str, role: Role, created_by: str,
               expires_at: datetime | None, *, subject: str | None = None) -> tuple[str, TokenRow]:
    """A fresh secret and the row that stores it hashed."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = TokenRow(name=name, token_hash=hash_token(secret), prefix=secret[: len(TOKEN_PREFIX) + 4],
                   role=role.value, subject=subject or name, created_by=created_by,
                   expires_at=expires_at)
    return secret, row


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _token_out(row: TokenRow) -> TokenOut:
    return TokenOut(
        name=row.name,
        prefix=row.prefix,
        role=Role(row.role),
        subject=row.subject or row.name,
        model=row.model,
        endpoint=row.endpoint,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def count_on_token(session: Session, name: str, counter: Any, amount: int, limit: int) -> bool:
    """Add ``amount`` to token ``name``'s ``counter`` column unless that passes ``limit``,
    in one conditional update (writes at once cannot pass it together); whether added."""
    return bool(session.execute(update(TokenRow).where(
        TokenRow.name == name, counter + amount <= limit).values(
        {counter.key: counter + amount})).rowcount)


def draw_job_allowance(session: Session, actor: Principal, counter: Any, amount: int,
                       limit: int, what: str) -> None:
    """Count ``amount`` more of ``what`` on a trainer token's row (``counter``, a column
    of it) in ``session``'s transaction, refusing (409, naming the token) where that would
    pass ``limit``: one conditional update, so writes at once cannot pass it together.
    Other roles, and principals of no token, are not counted."""
    if actor.role is not Role.TRAINER or amount <= 0:
        return
    if (count_on_token(session, actor.name, counter, amount, limit)
            or session.scalar(select(TokenRow.id).where(TokenRow.name == actor.name)) is None):
        return
    raise ConflictError(
        f"a training job's token makes at most {limit:,} {what}; {actor.name!r} made that "
        "many: mint a token per job (`modelplane train submit` does)",
        detail={"field": "token", "limit": limit})


def refuse_past_job_allowance(session: Session, actor: Principal, made_by: Any, limit: int,
                              what: str) -> None:
    """Refuse (409, naming the token) a trainer token's write of one more of ``what`` where
    it already made ``limit`` (counted on ``made_by``, the table's creator column): a
    job makes one or two, and a leaked job token, readable by every package the job
    installs, made them without end. Other roles are not counted."""
    if actor.role is not Role.TRAINER:
        return
    made = session.scalar(select(func.count()).where(made_by == actor.name)) or 0
    if made >= limit:
        raise ConflictError(
            f"a training job's token makes at most {limit} {what}; {actor.name!r} made that "
            "many: mint a token per job (`modelplane train submit` does)",
            detail={"field": "token", "limit": limit})
