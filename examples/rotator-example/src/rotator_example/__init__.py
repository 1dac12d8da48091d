"""An example rotator plugin: API tokens kept in a SQLite file (see docs/plugins.md)."""
