"""A pydantic-settings source that fills an app's settings fields from rotator-managed secrets.

    class AppSettings(BaseSettings):
        database_password: Annotated[SecretStr, FromRotator("billing-db", "password")]

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, RotatorSettingsSource(settings_cls), env_settings,
                    dotenv_settings, file_secret_settings)

The value is read when the settings object is built; a settings object does not
follow later rotations (build a new one, or use `SecretReader.call` for logins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, get_args

from pydantic import SecretStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from rotator.client import SecretReader
from rotator.errors import ConfigError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings


@dataclass(frozen=True)
class FromRotator:
    """Field metadata: fill this field from `secret`'s CURRENT value (one field, or all)."""

    secret: str
    #: The secret's field to use; None gives the whole value as a dict.
    field: str | None = "password"


class RotatorSettingsSource(PydanticBaseSettingsSource):
    """Reads every field marked with `FromRotator` through a SecretReader.

    Without a reader, one is built from the workers' schedules.yaml and ROTATOR_*
    settings when the first marked field is read, and closed when the source is done.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        reader: SecretReader | Callable[[], SecretReader] | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self._reader = reader

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        marker = _marker(field)
        if marker is None:
            return None, field_name, False
        with _Readers(self._reader) as reader:
            return _value(reader, marker, field, field_name), _key(field, field_name), False

    def __call__(self) -> dict[str, Any]:
        marked = {
            name: (field, marker)
            for name, field in self.settings_cls.model_fields.items()
            if (marker := _marker(field)) is not None
        }
        if not marked:
            return {}
        with _Readers(self._reader) as reader:
            return {
                _key(field, name): _value(reader, marker, field, name)
                for name, (field, marker) in marked.items()
            }


class _Readers:
    """The given reader as is, or one built for this read and closed after it."""

    def __init__(self, given: SecretReader | Callable[[], SecretReader] | None) -> None:
        self._given = given
        self._owned: SecretReader | None = None

    def __enter__(self) -> SecretReader:
        if isinstance(self._given, SecretReader):
            return self._given
        self._owned = self._given() if self._given is not None else SecretReader.from_schedules()
        return self._owned

    def __exit__(self, *exc_info: object) -> None:
        if self._owned is not None:
            self._owned.close()


def _marker(field: FieldInfo) -> FromRotator | None:
    return next((m for m in field.metadata if isinstance(m, FromRotator)), None)


def _key(field: FieldInfo, field_name: str) -> str:
    alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
    return alias or field_name


def _value(reader: SecretReader, marker: FromRotator, field: FieldInfo, name: str) -> Any:
    """The marked value, validated here so a misfit is a ConfigError that shows no value.

    Strings go in as SecretStr wherever the annotation allows one (`SecretStr | None`
    too), so neither pydantic-settings' state dump nor a later error shows them.
    """
    credential = reader.current(marker.secret)
    if marker.field is None:
        value: Any = credential.as_dict()
    elif marker.field not in credential:
        have = ", ".join(sorted(credential)) or "none"
        raise ConfigError(
            f"secret {marker.secret!r} has no field {marker.field!r} (its fields: {have}); "
            "fix the FromRotator(...) marker or the stored value"
        )
    else:
        value = credential[marker.field]
    if isinstance(value, str) and _allows_secretstr(field.annotation):
        value = SecretStr(value)
    return _validated(value, marker, field, name)


def _allows_secretstr(annotation: Any) -> bool:
    return annotation is SecretStr or any(_allows_secretstr(a) for a in get_args(annotation))


def _validated(value: Any, marker: FromRotator, field: FieldInfo, name: str) -> Any:
    """`value` as the field's type and constraints make it, or a ConfigError naming the
    field and pydantic's error types. The ValidationError (whose text shows the input)
    is neither raised nor chained: the ConfigError is raised outside its except block."""
    annotated: Any = Annotated[(field.annotation, *field.metadata)]  # with its constraints
    adapter: TypeAdapter[Any] = TypeAdapter(annotated)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems = _problems(exc)
    source = f"secret {marker.secret!r}"
    source += " (the whole value)" if marker.field is None else f" field {marker.field!r}"
    raise ConfigError(
        f"settings field {name!r} does not fit {source}: {problems}; "
        "fix the field's type or the FromRotator(...) marker, or the stored value"
    )


def _problems(exc: ValidationError) -> str:
    """Where and what (pydantic's error type) for each error; never the input or a message,
    which a custom validator may have built from the value."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return ", ".join(
        f"{'.'.join(map(str, error['loc']))} ({error['type']})" if error["loc"] else error["type"]
        for error in errors
    )
