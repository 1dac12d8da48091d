"""PostgreSQL password rotation, alternating-users strategy (`strategy: alternating`).

Two roles take turns: `<username>` and its clone (`<username>_clone`, or `clone_username`).
Each rotation sets a new password on the role that is *not* CURRENT; finishing makes that
credential CURRENT, so the old CURRENT stays PREVIOUS and keeps logging in for a whole
interval: no running application is cut off. The password of a role is only replaced one
rotation later, when its turn comes again.

* `generate` picks the other role; with no CURRENT yet it picks the clone, since an adopted
  CURRENT is normally the main role.
* `apply` creates a missing clone (`CREATE ROLE ... LOGIN PASSWORD ... IN ROLE <username>`,
  one statement, so it inherits the main role's privileges and a crash cannot leave it half
  made) and makes sure an existing clone is a member of the main role before its password is
  set last: a PENDING that logs in proves every earlier step happened, so a replay is a no-op.
* An existing clone is taken over only if it looks like one, checked before any change: no
  power the main role lacks (SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION), no
  membership but the main role's, and it inherits the main role's privileges (USAGE, not just
  MEMBER: a NOINHERIT clone, or one granted WITH INHERIT FALSE, would log in and see nothing).
* Before the admin changes the other role, CURRENT must log in: the admin's power is never
  used on the strength of a stored value nobody has proven (the confused-deputy guard).
* `retire` keeps the default (nothing): the PREVIOUS role's password is replaced by its next
  turn, and dropping or locking it would cut off clients that have not reread the store.
* A rollback re-applies CURRENT, whose role this rotation never touched: it still logs in,
  so that is a no-op.

Objects the clone creates belong to the clone, not to the main role (see
docs/rotator-postgres.md for pre-creating the clone with `SET role` or default privileges).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from rotator.credential import Credential
from rotator.errors import ConfigError, CredentialRejected, TransientError
from rotator.passwords import generate_password
from rotators.postgres import PostgresPasswordRotator

_ROLES_PRESENT = (
    "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %(main)s),"
    " EXISTS (SELECT FROM pg_roles WHERE rolname = %(clone)s)"
)
#: What an existing clone holds beyond the main role: powers, other memberships, and
#: whether it is a member that inherits (USAGE) or would inherit once granted (rolinherit).
_CLONE_SHAPE = """
SELECT array_remove(ARRAY[
         CASE WHEN c.rolsuper AND NOT m.rolsuper THEN 'SUPERUSER' END,
         CASE WHEN c.rolcreaterole AND NOT m.rolcreaterole THEN 'CREATEROLE' END,
         CASE WHEN c.rolcreatedb AND NOT m.rolcreatedb THEN 'CREATEDB' END,
         CASE WHEN c.rolbypassrls AND NOT m.rolbypassrls THEN 'BYPASSRLS' END,
         CASE WHEN c.rolreplication AND NOT m.rolreplication THEN 'REPLICATION' END
       ], NULL),
       ARRAY(SELECT DISTINCT r.rolname::text FROM pg_auth_members a
             JOIN pg_roles r ON r.oid = a.roleid
             WHERE a.member = c.oid AND a.roleid <> m.oid ORDER BY 1),
       pg_has_role(c.oid, m.oid, 'MEMBER'),
       pg_has_role(c.oid, m.oid, 'USAGE'),
       c.rolinherit
FROM pg_roles c, pg_roles m WHERE c.rolname = %(clone)s AND m.rolname = %(main)s
"""


class AlternatingPostgresRotator(PostgresPasswordRotator):
    """Rotates two PostgreSQL roles in turn; made by PostgresPasswordRotator for its targets."""

    def expected_identity(self) -> dict[str, tuple[object, ...]]:
        """Either role is this secret's: the confused-deputy guard accepts both, no other."""
        expected = super().expected_identity()
        expected["username"] = self.target.role_names
        return expected

    def generate(self, current: Credential | None) -> Credential:
        """A new password for the role that is not CURRENT's (the clone when there is none)."""
        main, clone = self.target.role_names
        role = main if current is not None and current.username == clone else clone
        password = generate_password(self.context.password_policy)
        self._generated = self.complete(Credential(username=role, password=password))
        return self._generated

    def apply(
        self, pending: Credential, current: Credential | None, previous: Credential | None
    ) -> None:
        if self._already_accepted(pending):
            return
        role = pending.username or self.target.username
        if current is not None and (current.username or self.target.username) != role:
            self._prove_current(current, role)
        with self._admin_session(current, previous) as conn:
            if role == self.target.clone_name and self._create_clone(conn, pending):
                return
            self._set_password(conn, pending)

    def _prove_current(self, current: Credential, role: str) -> None:
        """CURRENT must log in before the admin touches the other role (confused deputy)."""
        try:
            self.test(current)
        except CredentialRejected as exc:
            raise CredentialRejected(
                f"refusing to change role {role!r}: CURRENT does not log in ({exc}), and the "
                "admin is not used on the strength of an unproven stored value; adopt the "
                "working password with `rotator put`"
            ) from None

    def _create_clone(self, conn: psycopg.Connection[Any], pending: Credential) -> bool:
        """Create the clone with PENDING's password if it is missing (True), else make sure
        it is a member of the main role (False: its password is set next)."""
        main, clone = self.target.role_names
        names = {"main": main, "clone": clone}
        with self._statement_errors(clone):
            row = conn.execute(_ROLES_PRESENT, names).fetchone()
        main_exists, clone_exists = row if row is not None else (False, False)
        if not main_exists:
            raise CredentialRejected(f"role {main!r} does not exist at {self._where()}")
        if not clone_exists:
            statement = sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(clone), self._verifier(conn, pending), sql.Identifier(main)
            )
            with self._statement_errors(clone):
                try:
                    conn.execute(statement)
                except psycopg.errors.DuplicateObject:
                    # Created by someone else since the check: the retry finds it and sets it.
                    raise TransientError(f"role {clone!r} appeared while being created") from None
            return True
        with self._statement_errors(clone):
            shape = conn.execute(_CLONE_SHAPE, names).fetchone()
        if shape is None:
            raise TransientError(f"role {clone!r} or {main!r} vanished while being checked")
        if not self._check_clone(*shape):  # not a member yet
            with self._statement_errors(clone):
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(main), sql.Identifier(clone))
                )
        return False

    def _check_clone(
        self, powers: list[str], others: list[str], member: bool, usage: bool, inherits: bool
    ) -> bool:
        """ConfigError unless an existing role looks like a clone; True if it is a member."""
        main, clone = self.target.role_names
        where = f"role {clone!r} at {self._where()}"
        unchanged = "nothing was changed"
        if powers:
            raise ConfigError(
                f"{where} has {', '.join(powers)}, which main role {main!r} lacks: it is not a "
                f"clone of {main!r} (another team's role?); set another `clone_username`, or "
                f"ALTER ROLE {clone} NO{' NO'.join(powers)}; {unchanged}"
            )
        if others:
            raise ConfigError(
                f"{where} is a member of {', '.join(map(repr, others))} besides {main!r}: it "
                f"would pass those on to the application; set another `clone_username`, or "
                f"REVOKE {', '.join(others)} FROM {clone}; {unchanged}"
            )
        if (member and not usage) or (not member and not inherits):
            raise ConfigError(
                f"{where} would not get the privileges of {main!r} (it is NOINHERIT, or holds "
                f"{main!r} WITH INHERIT FALSE); ALTER ROLE {clone} INHERIT, and on PostgreSQL "
                f"16+ GRANT {main} TO {clone} WITH INHERIT TRUE; {unchanged}"
            )
        return member
