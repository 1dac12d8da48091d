"""The embedded store: secret versions in the history database, Fernet-encrypted.

The default store, so rotator runs with no Vault and no AWS. Stage moves
happen in one transaction; UNIQUE(path, stage) makes two CURRENTs impossible
and UNIQUE(path, token) makes `put_pending` idempotent on the run id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from rotator.credential import Credential
from rotator.errors import StoreError, TransientError
from rotator.history import Database, StoredVersion, utcnow
from rotator.stores.base import SecretStore, SecretVersion, Stage, StoreConfig, StoreContext


class EmbeddedStoreConfig(StoreConfig):
    type: Literal["embedded"] = "embedded"


class EmbeddedStore(SecretStore):
    store_type: ClassVar[str] = "embedded"
    Config: ClassVar[type[StoreConfig]] = EmbeddedStoreConfig

    def __init__(self, name: str, database: Database, fernet: Fernet) -> None:
        self.name = name
        self.database = database
        self._fernet = fernet

    @classmethod
    def from_config(cls, name: str, config: StoreConfig, context: StoreContext) -> EmbeddedStore:
        return cls(name, context.database, context.settings.fernet())

    def __repr__(self) -> str:
        return f"EmbeddedStore({self.name!r})"

    def check(self) -> None:
        try:
            with self.database.session() as session:
                session.execute(select(StoredVersion.id).limit(1))
        except OperationalError as exc:
            raise StoreError(
                f"store {self.name!r}: history database unusable: {exc.orig}"
            ) from None

    def _decode(self, row: StoredVersion) -> SecretVersion:
        try:
            plaintext = self._fernet.decrypt(row.ciphertext)
        except InvalidToken:
            raise StoreError(
                f"store {self.name!r}: cannot decrypt {row.path!r}; "
                "ROTATOR_ENCRYPTION_KEY is not the key it was written with"
            ) from None
        stage = Stage(row.stage) if row.stage else None
        return SecretVersion(row.version_id, Credential.from_json(plaintext), stage, row.token)

    @staticmethod
    def _row(session: Session, path: str, stage: Stage) -> StoredVersion | None:
        query = select(StoredVersion).where(
            StoredVersion.path == path, StoredVersion.stage == stage
        )
        return session.scalars(query).first()

    def read(self, path: str, stage: Stage) -> SecretVersion | None:
        with self._transaction(reading=True) as session:
            row = self._row(session, path, stage)
            return None if row is None else self._decode(row)

    def read_stages(self, path: str) -> dict[Stage, SecretVersion | None]:
        """All three stages in one query (a rotation reads them together)."""
        found: dict[Stage, SecretVersion | None] = dict.fromkeys(Stage)
        with self._transaction(reading=True) as session:
            query = select(StoredVersion).where(
                StoredVersion.path == path, StoredVersion.stage.is_not(None)
            )
            for row in session.scalars(query):
                if row.stage is not None:
                    found[Stage(row.stage)] = self._decode(row)
        return found

    def put_pending(self, path: str, credential: Credential, token: str) -> SecretVersion:
        try:
            with self._transaction() as session:
                same_token = session.scalars(
                    select(StoredVersion).where(
                        StoredVersion.path == path, StoredVersion.token == token
                    )
                ).first()
                if same_token is not None:
                    if same_token.stage != Stage.PENDING:
                        raise StoreError(
                            f"store {self.name!r}: token {token} at {path!r} was spent on a "
                            "version that is no longer PENDING"
                        )
                    return self._decode(same_token)
                if self._row(session, path, Stage.PENDING) is not None:
                    raise StoreError(f"store {self.name!r}: {path!r} already has a PENDING version")
                return self._add(session, path, credential, token, Stage.PENDING)
        except IntegrityError:
            # A concurrent writer won; its version is the answer when the token matches.
            raise StoreError(
                f"store {self.name!r}: concurrent write to {path!r}; another run owns PENDING"
            ) from None

    def promote(self, path: str, version_id: str) -> None:
        with self._transaction() as session:
            row = session.scalars(
                select(StoredVersion).where(StoredVersion.version_id == version_id)
            ).first()
            if row is None or row.path != path:
                raise StoreError(f"store {self.name!r}: no version {version_id} at {path!r}")
            if row.stage == Stage.CURRENT:
                return
            if row.stage != Stage.PENDING:
                raise StoreError(f"store {self.name!r}: version {version_id} is not PENDING")
            row.stage = None
            session.flush()
            self._retire_current(session, path)
            row.stage = Stage.CURRENT.value

    def put_current(
        self, path: str, credential: Credential, token: str, replace_pending: bool = False
    ) -> SecretVersion:
        """Adoption in one transaction: an interrupted `put` changes nothing."""
        with self._transaction() as session:
            pending = self._row(session, path, Stage.PENDING)
            if pending is not None and not replace_pending:
                raise StoreError(f"store {self.name!r}: {path!r} has a PENDING version")
            if pending is not None:
                pending.stage = None
                session.flush()
            self._retire_current(session, path)
            return self._add(session, path, credential, token, Stage.CURRENT)

    def _add(
        self, session: Session, path: str, credential: Credential, token: str, stage: Stage
    ) -> SecretVersion:
        """A new encrypted version row holding `stage`."""
        row = StoredVersion(
            path=path,
            version_id=uuid.uuid4().hex,
            token=token,
            stage=stage.value,
            ciphertext=self._fernet.encrypt(credential.to_json().encode()),
            created_at=utcnow(),
        )
        session.add(row)
        return SecretVersion(row.version_id, credential, stage, token)

    def _retire_current(self, session: Session, path: str) -> None:
        """CURRENT becomes PREVIOUS and the old PREVIOUS loses its stage (one at a time)."""
        previous = self._row(session, path, Stage.PREVIOUS)
        current = self._row(session, path, Stage.CURRENT)
        if previous is not None:
            previous.stage = None
            session.flush()
        if current is not None:
            current.stage = Stage.PREVIOUS.value
            session.flush()

    def discard_pending(self, path: str, version_id: str) -> None:
        with self._transaction() as session:
            row = self._row(session, path, Stage.PENDING)
            if row is not None and row.version_id == version_id:
                row.stage = None

    @contextmanager
    def _transaction(self, reading: bool = False) -> Iterator[Session]:
        """A session whose database outages surface as TransientError naming the store; a
        read is one statement, so it needs no transaction around it."""
        try:
            with self.database.statement() if reading else self.database.session() as session:
                yield session
        except OperationalError as exc:
            raise TransientError(f"store {self.name!r} unreachable: {exc.orig}") from None
