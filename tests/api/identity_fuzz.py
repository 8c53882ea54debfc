"""A fuzzer for the builtin identity API: every route, every attribute, hostile values; counts the 5xx.

Deterministic (a fixed corpus, no randomness), so a 5xx it finds is a 5xx it finds again. Used by
``test_identity_fuzz.py`` against real servers (SQLite and PostgreSQL), and runnable on its own:

    .venv/bin/python -m tests.api.identity_fuzz            # starts its own SQLite server
    .venv/bin/python -m tests.api.identity_fuzz URL PASSWORD

Mutations target a sacrificial user, project and role that the fuzzer (re)creates, never the admin.
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

V3 = "/identity/v3"
NESTED_DEEP = "[" * 5000 + "]" * 5000
OBJECT_DEEP = '{"a":' * 2000 + "1" + "}" * 2000


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"x": [value]}
    return value


class Raw:
    """A JSON text spliced into a body as is (for what json.dumps cannot say: NaN, huge ints, bad escapes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308,
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("123456789012345678901234567890"),
    Raw("-98765432109876543210987654321"), Raw('"\\ud800"'), Raw('"\\udfff\\ud800"'), Raw('"\\u0000"'),
    "", " ", "\t", "a", "admin", "default", "Default", "\x00", "a\x00b", "\n\r", "\x01\x02\x1f\x7f",
    "x" * 64, "x" * 65, "x" * 255, "x" * 256, "y" * 4097, "z" * 60_000, "é" * 200, "😀" * 100, "\u202e\u200b",
    "%00", "../..", "' OR '1'='1", "<script>", "${jndi:x}", "\\", '"',
    [], [None], ["a", 1], [[[]]], {}, {"id": "x"}, {"name": None}, {"a": {"b": {"c": []}}},
    _nested(60), Raw(NESTED_DEEP), Raw(OBJECT_DEEP),
]
# Kept short where each value costs a scrypt hash or where the attribute only has a few shapes.
STRINGISH: list[Any] = [None, 0, True, "", "x" * 300, "\x00", [], {}, Raw("NaN"), Raw("1e400"), "a\x00b"]

RAW_BODIES: list[bytes] = [
    b"", b" ", b"null", b"true", b"0", b'""', b"[]", b"{}", b"{", b"}", b"[", b"NaN", b"Infinity",
    b"\xff\xfe\x00", b"\xef\xbb\xbf{}", b'{"a":1,"a":2}', b"{'single': 'quotes'}", b'{"x": 1} trailing',
    b"\x00", NESTED_DEEP.encode(), OBJECT_DEEP.encode(), b'"' + b"\\ud800" * 10 + b'"', b"1" * 5000,
]


def render(value: Any) -> str:
    """JSON text for a body that may hold Raw pieces."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


def with_value(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``base`` with ``value`` at ``path`` (made if missing, replacing whatever is in the way)."""
    out = copy.deepcopy(base)
    node: Any = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


def leaf_paths(body: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of a body, inner nodes included."""
    for key, value in body.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from leaf_paths(value, (*prefix, key))


@dataclass
class Finding:
    method: str
    path: str
    body: str
    status: int
    answer: str


@dataclass
class Report:
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[Finding] = field(default_factory=list)
    bad_shape: list[Finding] = field(default_factory=list)  # an error not in Keystone's shape

    def summary(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        return (f"{self.sent} requests, {len(self.server_errors)} answered 5xx, {len(self.bad_shape)} errors not in "
                f"Keystone's shape ({codes})")


class Fuzzer:
    def __init__(self, url: str, admin_password: str, admin_user: str = "admin") -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=60)
        self.report = Report()
        self.password = admin_password
        self.admin_user = admin_user
        self.token = self._login()
        self.ids: dict[str, str] = {}

    # -- plumbing ----------------------------------------------------------------------------------------
    def _login(self) -> str:
        resp = self.http.post(f"{self.url}{V3}/auth/tokens", json={"auth": self.password_auth()})
        if resp.status_code != 201:
            raise RuntimeError(f"admin login failed: {resp.status_code} {resp.text}")
        return resp.headers["X-Subject-Token"]

    def password_auth(self) -> dict[str, Any]:
        return {"identity": {"methods": ["password"], "password": {"user": {
            "name": self.admin_user, "domain": {"name": "Default"}, "password": self.password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}

    def send(self, method: str, path: str, body: Any = None, *, content: bytes | Iterator[bytes] | None = None,
             headers: dict[str, str] | None = None, token: str | None = None) -> httpx.Response:
        h = {"X-Auth-Token": self.token if token is None else token, **(headers or {})}
        if content is None and body is not None:
            content = render(body).encode("utf-8", "surrogatepass")
            h.setdefault("Content-Type", "application/json")
        raw_headers = {k.encode(): v.encode("latin-1") for k, v in h.items()}  # non-ASCII header bytes go as they are
        try:
            resp = self.http.request(method, self.url + path, content=content, headers=raw_headers)
        except httpx.HTTPError as exc:  # the server hung up on us: worth a look, like a 5xx
            self._record(method, path, content, 599, repr(exc))
            self.http = httpx.Client(timeout=60)
            raise
        self._record(method, path, content, resp.status_code, resp.text, resp)
        return resp

    def _record(self, method: str, path: str, content: bytes | Iterator[bytes] | None, status: int, text: str,
                resp: httpx.Response | None = None) -> None:
        r = self.report
        r.sent += 1
        r.by_status[status] = r.by_status.get(status, 0) + 1
        shown = (content or b"")[:200].decode("utf-8", "replace") if isinstance(content, bytes | None) else "<chunked>"
        finding = Finding(method, path[:200], shown, status, text[:300])
        if status >= 500:
            r.server_errors.append(finding)
        elif status >= 400 and method != "HEAD" and resp is not None:
            try:
                err = resp.json()["error"]
                ok = err["code"] == status and isinstance(err["title"], str) and isinstance(err["message"], str)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                r.bad_shape.append(finding)

    def try_send(self, *args: Any, **kw: Any) -> httpx.Response | None:
        try:
            return self.send(*args, **kw)
        except httpx.HTTPError:
            return None

    # -- sacrificial objects --------------------------------------------------------------------------------
    def victim(self, kind: str) -> str:
        """The id of a live fuzz user, project or role, (re)created when a fuzz case deleted or renamed it."""
        ref = self.ids.get(kind)
        if ref is not None:
            got = self.http.get(f"{self.url}{V3}/{kind}s/{ref}", headers={"X-Auth-Token": self.token})
            if got.status_code == 200:
                return ref
        n = len(self.ids) + self.report.sent
        body = {"user": {"name": f"fuzz-user-{n}", "password": "fuzz-password-1"},
                "project": {"name": f"fuzz-project-{n}"}, "role": {"name": f"fuzz-role-{n}"}}[kind]
        resp = self.http.post(f"{self.url}{V3}/{kind}s", json={kind: body}, headers={"X-Auth-Token": self.token})
        if resp.status_code != 201:
            raise RuntimeError(f"cannot make the fuzz {kind}: {resp.status_code} {resp.text}")
        self.ids[kind] = resp.json()[kind]["id"]
        return self.ids[kind]

    # -- the corpus ----------------------------------------------------------------------------------------
    def bodies(self) -> None:
        """Every attribute of every POST/PATCH body, and the wrappers around them, set to every hostile value."""
        templates: dict[str, tuple[str, dict[str, Any]]] = {
            "user": ("user", {"name": "fuzz-u", "password": "fuzz-pass-1", "enabled": True, "domain_id": "default",
                              "default_project_id": None, "description": "d", "email": "e@x", "options": {}}),
            "project": ("project", {"name": "fuzz-p", "description": "d", "enabled": True, "domain_id": "default",
                                    "is_domain": False, "parent_id": None, "tags": ["t"], "options": {}}),
            "role": ("role", {"name": "fuzz-r", "domain_id": None, "description": "d", "options": {}}),
        }
        for kind, (key, attrs) in templates.items():
            for attr in attrs:
                values = STRINGISH if attr == "password" else HOSTILE
                for value in values:
                    base = dict(attrs, name=f"{attrs['name']}-{self.report.sent}")
                    body = {key: with_value(base, (attr,), value)}
                    if kind == "role" or attr == "name" or not isinstance(value, str):
                        self.try_send("POST", f"{V3}/{kind}s", body)
                    if kind != "role":
                        self.try_send("PATCH", f"{V3}/{kind}s/{self.victim(kind)}", {key: {attr: value}})
            for value in HOSTILE:  # the wrapper itself
                self.try_send("POST", f"{V3}/{kind}s", {key: value})
                self.try_send("POST", f"{V3}/{kind}s", value)
                if kind != "role":
                    self.try_send("PATCH", f"{V3}/{kind}s/{self.victim(kind)}", {key: value})
            for raw in RAW_BODIES:
                self.try_send("POST", f"{V3}/{kind}s", content=raw)
                if kind != "role":
                    self.try_send("PATCH", f"{V3}/{kind}s/{self.victim(kind)}", content=raw)

    def auth(self) -> None:
        """``POST /v3/auth/tokens``: every node of password, token and scope bodies, set to every hostile value."""
        password = {"auth": self.password_auth()}
        token = {"auth": {"identity": {"methods": ["token"], "token": {"id": self.token}},
                          "scope": {"project": {"id": "x", "name": "admin", "domain": {"id": "default",
                                                                                      "name": "Default"}}}}}
        by_id = with_value(password, ("auth", "identity", "password", "user"), {"id": "x", "password": "p"})
        extras = [("auth", "scope", "domain"), ("auth", "scope", "system"), ("auth", "scope", "OS-TRUST:trust"),
                  ("auth", "identity", "methods", "extra")]
        cases = [(password, [*leaf_paths(password), *extras]), (token, [*leaf_paths(token), *extras]),
                 (by_id, [p for p in leaf_paths(by_id) if p[:2] == ("auth", "identity")])]  # its scope is password's
        for base, paths in cases:
            for path in paths:
                for value in HOSTILE:
                    if path[-1] == "password" and isinstance(value, str) and len(value) > 300:
                        continue  # each costs a scrypt hash; the long ones are covered by STRINGISH below
                    self.try_send("POST", f"{V3}/auth/tokens", with_value(base, path, value), token="")
        for methods in (["password"] * 50, ["token", "password"], ["password", "totp"], ["x" * 1000], [""]):
            self.try_send("POST", f"{V3}/auth/tokens", with_value(password, ("auth", "identity", "methods"), methods),
                          token="")
        for value in STRINGISH + ["y" * 5000]:
            self.try_send("POST", f"{V3}/auth/tokens",
                          with_value(password, ("auth", "identity", "password", "user", "password"), value), token="")
        for raw in RAW_BODIES:
            self.try_send("POST", f"{V3}/auth/tokens", content=raw, token="")

    def urls(self) -> None:
        """Hostile ids in every path, hostile query values, hostile tokens, and every method on every route."""
        ids = ["", "x", "%00", "a%00b", "%ff%fe", "%ed%a0%80", "x" * 65, "x" * 5000, "..", "%2e%2e%2f",
               "%25", "default", "Default", "admin", "😀", "%0a%0d", "%20", "a%2Fb", "?", "%3F", "'", "%22"]
        templates = ["/users/{}", "/users/{}/projects", "/projects/{}", "/roles/{}", "/domains/{}",
                     "/projects/{}/users/{}/roles", "/projects/{}/users/{}/roles/{}"]
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
        for template, ref in itertools.product(templates, ids):
            path = V3 + template.format(*([ref] * template.count("{}")))
            for method in methods:
                if method in ("DELETE", "PATCH", "PUT") and ref in ("admin", "default", "Default"):
                    continue  # not the admin's own objects (the ids are random anyway; keep it obvious)
                self.try_send(method, path, content=b'{"user": {}}' if method in ("POST", "PATCH") else None)
        # Mixed real and hostile ids in grants.
        real = {"p": self.victim("project"), "u": self.victim("user"), "r": self.victim("role")}
        for p, u, r in itertools.product([real["p"], "%00"], [real["u"], "x" * 300], [real["r"], "%00"]):
            for method in ("PUT", "HEAD", "DELETE", "GET"):
                self.try_send(method, f"{V3}/projects/{p}/users/{u}/roles/{r}")
        queries = ["name", "domain_id", "user.id", "scope.project.id", "role.id", "nocatalog", "enabled", "limit"]
        qvalues = ["", "\x00", "x" * 5000, "😀", "%", "a&b=c", "' OR 1=1", "\udcff".encode("utf-8", "surrogatepass")
                   .decode("latin-1")]
        for route in ("/users", "/projects", "/roles", "/role_assignments", "/domains", "/auth/projects",
                      "/auth/catalog", "/auth/tokens", ""):
            for q, v in itertools.product(queries, qvalues):
                self.try_send("GET", f"{V3}{route}?{urllib.parse.quote(q)}={urllib.parse.quote(v)}",
                              headers={"X-Subject-Token": self.token})
            for method in methods:
                self.try_send(method, f"{V3}{route}")
        for tok in ["", "x", "x" * 8000, "x y", "é".encode().decode("latin-1"), "Bearer x", self.token + "x"]:
            for route in ("/auth/tokens", "/users", "/auth/projects", "/auth/catalog"):
                self.try_send("GET", f"{V3}{route}", token=tok, headers={"X-Subject-Token": tok})
                self.try_send("DELETE", f"{V3}/auth/tokens", headers={"X-Subject-Token": tok})
        for path in ("/identity", "/identity/", "/identity/v2.0", "/identity/v3/auth", "/identity/v3/OS-FEDERATION",
                     "/identity/v3/users/x/y/z", "/identity/%00", "/identity/v3/" + "a/" * 500):
            for method in methods:
                self.try_send(method, path)

    def sizes(self) -> None:
        """Bodies around the 112 KiB cap, declared and chunked."""
        for route in ("/auth/tokens", "/users", "/projects", "/roles"):
            for size in (114_688 - 40, 114_688 + 1, 1_000_000):
                body = b'{"x": "' + b"a" * size + b'"}'
                self.try_send("POST", f"{V3}{route}", content=body, headers={"Content-Type": "application/json"})
                self.try_send("POST", f"{V3}{route}", content=iter([body[i:i + 8192]
                                                                    for i in range(0, len(body), 8192)]))

    def run(self) -> Report:
        self.bodies()
        self.auth()
        self.urls()
        self.sizes()
        # Still serving, and the admin still logs in.
        self.token = self._login()
        return self.report


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        report = Fuzzer(argv[0], argv[1]).run()
    else:
        import tempfile
        from pathlib import Path

        from tests.api.conftest import start_server

        tmp = Path(tempfile.mkdtemp(prefix="neutrino-fuzz-"))
        srv = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite")
        try:
            report = Fuzzer(srv.url, "secret").run()
        finally:
            srv.stop()
    print(report.summary())
    for f in report.server_errors[:50] + report.bad_shape[:50]:
        print(f"{f.status} {f.method} {f.path} body={f.body[:80]!r} -> {f.answer[:160]}")
    return 1 if report.server_errors or report.bad_shape else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
