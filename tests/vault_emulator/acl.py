"""ACL policies: which capability a call needs, and whether a token's policies grant it.

Policies are read from HCL (`path "<pattern>" { capabilities = [...] }`) or
their JSON form. As in Vault, the rules of all a token's policies are merged
per pattern, then the single most specific pattern matching the path decides
(an exact path, else the glob whose first wildcard comes latest, ...); `deny`
refuses everything. POST and PUT need `create` when the target does not exist
yet and `update` when it does, where the engine can tell (KV); elsewhere
either is accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

_BLOCK = re.compile(r'path\s+"([^"]+)"\s*\{(.*?)\}', re.S)
_CAPABILITIES = re.compile(r"capabilities\s*=\s*\[([^\]]*)\]")

#: The `default` policy every token carries unless refused (the parts rotator touches).
DEFAULT_POLICY = """
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/revoke-self" { capabilities = ["update"] }
path "sys/capabilities-self" { capabilities = ["update"] }
path "sys/renew" { capabilities = ["update"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
path "cubbyhole/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "sys/tools/hash" { capabilities = ["update"] }
path "sys/control-group/request" { capabilities = ["update"] }
"""

_METHOD_CAPABILITY = {"GET": "read", "LIST": "list", "DELETE": "delete", "PATCH": "patch"}


def parse_policy(text: str) -> dict[str, set[str]]:
    """Pattern -> capabilities, from HCL or JSON policy text."""
    if text.strip().startswith("{"):
        paths = json.loads(text).get("path", {})
        return {pattern: set(rule.get("capabilities", [])) for pattern, rule in paths.items()}
    rules: dict[str, set[str]] = {}
    for pattern, body in _BLOCK.findall(text):
        found = _CAPABILITIES.search(body)
        names = re.findall(r'"([^"]*)"', found.group(1)) if found else []
        rules.setdefault(pattern, set()).update(names)
    return rules


def needed(method: str, exists: bool | None) -> set[str]:
    """The capabilities any one of which lets `method` through (`exists`: None if unknown)."""
    if method in _METHOD_CAPABILITY:
        return {_METHOD_CAPABILITY[method]}
    if exists is None:
        return {"create", "update"}
    return {"update"} if exists else {"create"}


class Acl:
    """The merged rules of a token's policies."""

    def __init__(self, policies: Iterable[str]) -> None:
        self.rules: dict[str, set[str]] = {}
        for text in policies:
            for pattern, capabilities in parse_policy(text).items():
                self.rules.setdefault(pattern, set()).update(capabilities)

    def allows(self, path: str, capabilities: set[str]) -> bool:
        granted = self.capabilities(path)
        return "deny" not in granted and bool(granted & capabilities)

    def capabilities(self, path: str) -> set[str]:
        if path in self.rules:
            return self.rules[path]
        matching = [p for p in self.rules if _matches(p, path)]
        if not matching:
            return set()
        return self.rules[max(matching, key=_priority)]


def _matches(pattern: str, path: str) -> bool:
    parts = [r"[^/]+" if part == "+" else re.escape(part) for part in pattern.split("/")]
    regex = "/".join(parts)
    if pattern.endswith("*"):
        regex = regex[: -len(re.escape("*"))] + ".*"
    return re.fullmatch(regex, path) is not None


def _priority(pattern: str) -> tuple[int, bool, int, int, str]:
    """Vault's ordering: later first wildcard, no trailing glob, fewer `+`, longer, larger."""
    wildcards = [i for i, char in enumerate(pattern) if char in "+*"]
    first = wildcards[0] if wildcards else len(pattern)
    return (first, not pattern.endswith("*"), -pattern.split("/").count("+"), len(pattern), pattern)
