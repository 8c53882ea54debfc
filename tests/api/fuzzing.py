"""A deterministic fuzzer for the Neutron v2.0 API: hunts 5xx, requests that never answer, and errors that
are not ``{"NeutronError": {"type", "message", "detail"}}``.

One place for the request generator and the runner; ``bench/fuzz.py`` is the command line around it and
``tests/api/test_fuzz.py`` a bounded run of it. The request stream is a pure function of the seed (and of
the attribute maps in ``neutrino.api``): known regressions first, then rounds over "slots" — one slot per
route x method, per attribute of every resource (create, update, filter, sort), per list parameter, per
agent-channel endpoint — each round giving every slot its next hostile value.

Findings are deduplicated by (method, route template, status, error type, cause); the cause is the
exception and innermost neutrino frame from the server log when the server's log is readable (the 500
body carries the request id), else the kind of hostile input. Each finding keeps its smallest reproduction.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from neutrino.api.attributes import ResourceSpec
from neutrino.api.resources import AGENT, NETWORK, PORT, SECURITY_GROUP, SECURITY_GROUP_RULE, SUBNET

SPECS: tuple[ResourceSpec, ...] = (NETWORK, SUBNET, PORT, AGENT, SECURITY_GROUP, SECURITY_GROUP_RULE)
TAGGABLE = ("networks", "subnets", "ports", "agents", "routers", "security-groups", "security-group-rules")
NAN, INF = float("nan"), float("inf")
# What a fuzzed server needs besides conftest's defaults: the fuzzer makes security groups and rules by
# the thousand, and its fixtures must still be creatable afterwards.
SERVER_ENV = {"NEUTRINO_QUOTAS__SECURITY_GROUP": "-1", "NEUTRINO_QUOTAS__SECURITY_GROUP_RULE": "-1"}
JSON = "application/json"


# -- hostile values ---------------------------------------------------------------------------------------
def nest_dict(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def nest_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def hostile_values() -> list[tuple[str, Any]]:
    """JSON values (NaN/Infinity serialize as the raw tokens) that each attribute gets in turn."""
    return [
        ("null", None), ("true", True), ("false", False), ("0", 0), ("1", 1), ("-1", -1), ("-2", -2),
        ("2^63", 2**63), ("2^64", 2**64), ("10^40", 10**40), ("-10^40", -(10**40)),
        ("1.5", 1.5), ("1e30", 1e30), ("-1e30", -1e30), ("1e308", 1e308), ("5e-324", 5e-324), ("-0.0", -0.0),
        ("NaN", NAN), ("Infinity", INF), ("-Infinity", -INF),
        ("empty-str", ""), ("str256", "x" * 256), ("str64k", "y" * 65536),
        ("newlines", "a\nb\r\nc"), ("ctrl", "\x01\x02\x1b[31m\x7f"), ("nul", "a\x00b"),
        ("unicode", "ñé漢字🙂\u202e"), ("lone-surrogate", "\ud800"),
        ("zone6", "fe80::1%eth0"), ("zone4", "10.0.0.1%eth0"), ("v4mapped", "::ffff:10.0.0.1"),
        ("cidr/33", "10.0.0.0/33"), ("0/0", "0.0.0.0/0"), ("::/0", "::/0"), ("host-cidr", "10.0.0.5/24"),
        ("zero-padded-ip", "010.000.000.001"), ("spaced-ip", " 10.0.0.1 "), ("v6-full", "2001:db8::ffff:ffff"),
        ("str-true", "true"), ("str-neg", "-1"), ("str-bignum", "1" + "0" * 40), ("str-nan", "NaN"),
        ("uuid-zero", "00000000-0000-0000-0000-000000000000"), ("uuid-braces", "{" + str(uuid.UUID(int=7)) + "}"),
        ("uuid-hex", uuid.UUID(int=9).hex), ("sql", "' OR 1=1; --"), ("fmt", "%s%n{0}{}"),
        ("comma-slash", "a,b/c"), ("mac-bcast", "ff:ff:ff:ff:ff:ff"), ("mac-dash", "FA-16-3E-00-00-01"),
        ("[]", []), ("{}", {}), ("[str]", ["a"]), ("{k:v}", {"a": 1}), ("[null]", [None]), ("[[1]]", [[1]]),
        ("list1000", list(range(1000))), ("list1000-str", ["x"] * 1000), ("list1000-dict", [{}] * 1000),
        ("dict1000", {str(i): i for i in range(1000)}),
        ("deep-dict-300", nest_dict(300)), ("deep-list-300", nest_list(300)), ("deep-dict-600", nest_dict(600)),
    ]


HOSTILE = hostile_values()
# Query strings: what the query-string parsers (int, bool, ISO time, UUID) are handed.
QSTR: list[tuple[str, str]] = [
    ("maybe", "maybe"), ("empty", ""), ("-1", "-1"), ("0", "0"), ("2^63", str(2**63)), ("2^64", str(2**64)),
    ("10^40", "1" + "0" * 40), ("-10^40", "-1" + "0" * 40), ("5000-digits", "9" * 5000), ("1e3", "1e3"),
    ("1.5", "1.5"), ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("0x10", "0x10"), ("spaced", " 1 "),
    ("fullwidth-digit", "\uff11"), ("underscore-int", "1_000"), ("nul", "a\x00b"), ("newline", "a\nb"),
    ("unicode", "漢字🙂"), ("long", "z" * 8000), ("true", "true"), ("True", "True"), ("yes", "yes"),
    ("uuid-zero", "00000000-0000-0000-0000-000000000000"), ("sql", "' OR 1=1; --"), ("percent", "%"),
    ("comma", "a,b,,c"), ("zone6", "fe80::1%eth0"), ("ip", "10.0.0.1"), ("mac", "FA:16:3E:00:00:01"),
    ("cidr", "10.0.0.0/24"), ("json", '{"a":1}'), ("star", "*"), ("like", "%_%"),
]
TIMES: list[tuple[str, str]] = [
    ("min+14", "0001-01-01T00:00:00+14:00"), ("max-14", "9999-12-31T23:59:59-14:00"),
    ("min-zone", "0001-01-01T00:00:00-00:01"), ("max+zone", "9999-12-31T23:59:59+23:59"),
    ("date", "2026-01-01"), ("zulu", "2026-01-01T00:00:00Z"), ("month13", "2026-13-01"), ("now", "now"),
    ("zone+99", "2026-01-01T00:00:00+99:00"), ("micro", "2026-01-01T00:00:00.123456789+05:30"),
    ("week", "2026-W01-1"), ("epoch", "0"), ("empty", ""), ("tz-name", "2026-01-01T00:00:00 UTC"),
]
ID_VALUES: list[tuple[str, str]] = [
    ("uuid-zero", "00000000-0000-0000-0000-000000000000"), ("long", "i" * 5000), ("unicode", "漢字🙂"),
    ("nul", "a\x00b"), ("dots", ".."), ("slash", "a/b"), ("space", "a b"), ("percent", "%"),
    ("json-suffix", "x.json"), ("newline", "a\nb"), ("sql", "' OR 1=1; --"), ("empty-ish", " "),
]
STRUCT_KEYS: dict[str, tuple[str, ...]] = {
    "fixed_ips": ("subnet_id", "ip_address"),
    "allocation_pools": ("start", "end"),
    "host_routes": ("destination", "nexthop"),
    "allowed_address_pairs": ("ip_address", "mac_address"),
    "extra_dhcp_opts": ("opt_name", "opt_value", "ip_version"),
    "binding:profile": ("local_link_information", "capabilities"),
    "configurations": ("tunneling_ip", "tunnel_types"),
}


def fit(value: str, repeat: int, budget: int = 48_000) -> int:
    """Repeats of a query parameter that keep the URL under what HTTP clients send (64 KiB)."""
    return max(1, min(repeat, budget // (len(quote(value, safe="")) + 40)))


def jbytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def raw_deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- cases --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    method: str
    path: str                       # already percent-encoded
    route: str                      # template used to deduplicate (collection kept concrete)
    kind: str                       # what is hostile here, e.g. "page_reverse=maybe"
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    content_type: str | None = JSON
    who: str = "admin"              # admin | member | anon | badtoken
    headers: dict[str, str] = field(default_factory=dict)

    def url_path(self) -> str:
        return self.path + ("?" + urlencode(self.query, quote_via=quote) if self.query else "")

    def size(self) -> int:
        return len(self.url_path()) + len(self.body or b"")

    def describe(self, limit: int = 400) -> str:
        url = self.url_path()
        if len(url) > limit:
            url = f"{url[:limit]}... ({len(url)} chars; {len(self.query)} query parameters)"
        out = f"{self.method} {url}  [as {self.who}]"
        if self.headers:
            out += f"  headers={self.headers}"
        if self.body is not None:
            body = self.body.decode("utf-8", "backslashreplace")
            if len(body) > limit:
                body = f"{body[:limit]}... ({len(self.body)} bytes)"
            out += f"\n      body ({self.content_type}): {body}"
        elif self.content_type != JSON:
            out += f"  content-type={self.content_type}"
        return out


@dataclass
class Fixtures:
    admin_project: str
    member_project: str
    victim_project: str             # quotas are written only for this one (no resources in it)
    host: str
    tag: str
    shared_net: str = ""
    private_net: str = ""
    scratch_net: str = ""
    member_net: str = ""
    sub4: str = ""
    sub6: str = ""
    private_sub: str = ""
    scratch_sub: str = ""
    member_sub: str = ""
    port: str = ""
    scratch_port: str = ""
    member_port: str = ""
    member_port_shared: str = ""
    dhcp_agent: str = ""
    l2_agent: str = ""
    group: str = ""                 # the admin's security group (a port of the admin's is in it)
    scratch_group: str = ""
    member_group: str = ""
    rule: str = ""                  # a rule of each of those
    scratch_rule: str = ""
    member_rule: str = ""

    def scratch(self, collection: str) -> str:
        return {"networks": self.scratch_net, "subnets": self.scratch_sub, "ports": self.scratch_port,
                "agents": self.l2_agent, "security-groups": self.scratch_group,
                "security-group-rules": self.scratch_rule}.get(collection, str(uuid.UUID(int=1)))

    def admin_owned(self, collection: str) -> str:
        return {"networks": self.shared_net, "subnets": self.sub4, "ports": self.port,
                "agents": self.dhcp_agent, "security-groups": self.group,
                "security-group-rules": self.rule}.get(collection, str(uuid.UUID(int=2)))

    def seen_by_member(self, collection: str) -> list[str]:
        """What a member may aim at: the admin's shared and private resources, another project's port on
        the shared network, and its own."""
        return {"networks": [self.shared_net, self.private_net, self.member_net],
                "subnets": [self.sub4, self.sub6, self.private_sub, self.member_sub],
                "ports": [self.port, self.member_port_shared, self.member_port],
                "agents": [self.dhcp_agent, self.l2_agent],
                "security-groups": [self.group, self.member_group],
                "security-group-rules": [self.rule, self.member_rule]}.get(collection, [str(uuid.UUID(int=6))])

    def member_owned(self, collection: str) -> str:
        return {"networks": self.member_net, "subnets": self.member_sub, "ports": self.member_port,
                "agents": self.l2_agent, "security-groups": self.member_group,
                "security-group-rules": self.member_rule}.get(collection, str(uuid.UUID(int=3)))


Slot = Callable[[int, random.Random], "Case"]


def slot(family: Callable[..., Case], *args: Any) -> Slot:
    """One slot of a round: ``family(*args, k, rng)``, ``k`` being the slot's variant counter."""
    def make(k: int, rng: random.Random) -> Case:
        return family(*args, k, rng)
    return make


def pick(items: Sequence[Any], k: int) -> Any:
    return items[k % len(items)]


class Generator:
    """Builds cases from the fixtures; ``stream`` is the deterministic sequence for a seed."""

    def __init__(self, fx: Fixtures, seed: int) -> None:
        self.fx = fx
        self.seed = seed

    # -- helpers ----------------------------------------------------------------------------------------
    def plausible(self, key: str) -> Any:
        return {"subnet_id": self.fx.sub4, "ip_address": "10.77.0.50", "start": "10.77.0.100",
                "end": "10.77.0.120", "destination": "192.168.5.0/24", "nexthop": "10.77.0.1",
                "mac_address": "fa:16:3e:12:34:56", "opt_name": "mtu", "opt_value": "1400",
                "ip_version": 4}.get(key, "x")

    def variants(self, attr: str) -> list[str]:
        out = [label for label, _ in HOSTILE] + ["[hostile]"]
        out += [f"{{{key}:hostile}}" for key in STRUCT_KEYS.get(attr, ())]
        return out

    def value(self, attr: str, k: int, rng: random.Random) -> tuple[str, Any]:
        variant = pick(self.variants(attr), k)
        table = dict(HOSTILE)
        if variant in table:
            return variant, table[variant]
        inner_label, inner = pick(HOSTILE, rng.randrange(len(HOSTILE)))
        if variant == "[hostile]":
            return f"[{inner_label}]", [inner]
        key = variant[1:].split(":", 1)[0]
        item = {k2: self.plausible(k2) for k2 in STRUCT_KEYS[attr]}
        item[key] = inner
        if attr in ("binding:profile", "configurations"):
            return f"{{{key}:{inner_label}}}", item
        return f"[{{{key}:{inner_label}}}]", [item]

    def base_body(self, spec: ResourceSpec, rng: random.Random, member: bool) -> dict[str, Any]:
        if spec.name == "network":
            return {"name": "fz"}
        if spec.name == "subnet":
            net = self.fx.member_net if member else self.fx.scratch_net
            cidr = f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24"
            return {"network_id": net, "ip_version": 4, "cidr": cidr}
        if spec.name == "port":
            return {"network_id": self.fx.shared_net}
        if spec.name == "security_group_rule":
            return {"security_group_id": self.fx.member_group if member else self.fx.scratch_group,
                    "direction": "ingress", "protocol": "tcp", "port_range_min": rng.randrange(1, 65536),
                    "port_range_max": 65535}
        return {}

    @staticmethod
    def who(rng: random.Random, member_share: float = 0.3) -> str:
        return "member" if rng.random() < member_share else "admin"

    # -- families ---------------------------------------------------------------------------------------
    def create_attr(self, spec: ResourceSpec, attr: str, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        label, val = self.value(attr, k, rng)
        item = self.base_body(spec, rng, who == "member")
        item[attr] = val
        bulk = k % 7 == 3
        body = {spec.plural: [item, dict(item)]} if bulk else {spec.name: item}
        return Case("POST", f"/v2.0/{spec.collection}", f"/v2.0/{spec.collection}",
                    f"create{' bulk' if bulk else ''} {attr}={label}", body=jbytes(body), who=who)

    def update_attr(self, spec: ResourceSpec, attr: str, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        label, val = self.value(attr, k, rng)
        if who == "member":
            rid = rng.choice(self.fx.seen_by_member(spec.collection))
        else:
            rid = self.fx.scratch(spec.collection)
        headers = {}
        if k % 11 == 5:
            headers["If-Match"] = "revision_number=" + pick(QSTR, k)[1].replace("\n", " ").replace("\x00", "")
        return Case("PUT", f"/v2.0/{spec.collection}/{rid}", f"/v2.0/{spec.collection}/{{id}}",
                    f"update {attr}={label}", body=jbytes({spec.name: {attr: val}}), who=who, headers=headers)

    def filter_attr(self, spec: ResourceSpec, attr: str, k: int, rng: random.Random) -> Case:
        label, val = pick(QSTR, k)
        if attr == "fixed_ips":
            val = rng.choice(["ip_address=", "subnet_id=", "ip_address_substr=", "", "bogus="]) + val
        repeat = fit(val, pick([1, 1, 2, 30, 1000], k // len(QSTR) + rng.randrange(5)))
        if repeat > 1 and attr != "fixed_ips":
            query = [(attr, f"{val}{i}") for i in range(repeat)]
        else:
            query = [(attr, val)] * repeat
        return Case("GET", f"/v2.0/{spec.collection}", f"/v2.0/{spec.collection}",
                    f"filter {attr}={label} x{repeat}", query=query, who=self.who(rng))

    def sort_attr(self, spec: ResourceSpec, attr: str, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        direction = pick(["asc", "desc", "asc", "desc", "ASC", "", "sideways"], k)
        marker_kind = pick(["own", "own", "none", "hostile", "other"], k // 7 + rng.randrange(5))
        query = [("sort_key", attr), ("sort_dir", direction)]
        if marker_kind != "none":
            marker = {"own": self.fx.admin_owned(spec.collection) if who == "admin"
                      else self.fx.member_owned(spec.collection),
                      "other": self.fx.admin_owned(spec.collection) if who == "member"
                      else self.fx.member_owned(spec.collection),
                      "hostile": pick(ID_VALUES, k)[1]}[marker_kind]
            query += [("limit", str(rng.choice([1, 2, 5]))), ("marker", marker)]
        if rng.random() < 0.3:
            query.append(("page_reverse", rng.choice(["true", "false", "True", "1"])))
        return Case("GET", f"/v2.0/{spec.collection}", f"/v2.0/{spec.collection}",
                    f"sort {attr} {direction or 'empty'} marker={marker_kind}", query=query, who=who)

    def list_param(self, spec: ResourceSpec, param: str, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        if param == "changed_since":
            label, val = pick(TIMES, k)
            query = [(param, val)]
        elif param == "sort_dir":
            label, val = pick(QSTR, k)
            query = [("sort_dir", val)] + ([("sort_key", "id")] * rng.choice([0, 1, 2]))
        elif param == "marker":
            label, val = pick(ID_VALUES, k)
            query = [("marker", val), ("limit", rng.choice(["1", "2", "0", "-1"]))]
        elif param == "combo":
            label = "combo"
            query = [("limit", rng.choice(["1", "3"])), ("page_reverse", rng.choice(["true", "false"])),
                     ("marker", rng.choice([self.fx.admin_owned(spec.collection),
                                            self.fx.member_owned(spec.collection)])),
                     ("sort_key", rng.choice([a for a, s in spec.attrs.items() if s.column and s.sortable])),
                     ("sort_dir", rng.choice(["asc", "desc"])), ("fields", rng.choice(list(spec.attrs))),
                     ("tags", self.fx.tag)]
        else:
            label, val = pick(QSTR, k)
            query = [(param, val)] * fit(val, pick([1, 1, 1, 3, 1000], k // len(QSTR) + rng.randrange(5)))
        return Case("GET", f"/v2.0/{spec.collection}", f"/v2.0/{spec.collection}",
                    f"{param}={label}" + (f" x{len(query)}" if len(query) > 5 else ""), query=query, who=who)

    def show(self, spec: ResourceSpec, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        choice = pick(["own", "other", "hostile", "json"], k)
        if choice == "hostile":
            label, rid = pick(ID_VALUES, k // 4)
        else:
            label = choice
            rid = self.fx.member_owned(spec.collection) if (choice == "other") == (who == "admin") \
                else self.fx.admin_owned(spec.collection)
            if who == "member" and choice == "other":
                rid = rng.choice(self.fx.seen_by_member(spec.collection))
            rid += ".json" if choice == "json" else ""
        query = [("fields", pick(QSTR, k)[1])] if k % 3 == 1 else []
        return Case("GET", f"/v2.0/{spec.collection}/{quote(rid, safe='')}", f"/v2.0/{spec.collection}/{{id}}",
                    f"show id={label}", query=query, who=who)

    def delete(self, spec: ResourceSpec, k: int, rng: random.Random) -> Case:
        who = self.who(rng, 0.5)
        choice = pick(["scratch", "hostile", "other", "if-match"], k)
        headers: dict[str, str] = {}
        if choice == "hostile":
            label, rid = pick(ID_VALUES, k // 4)
        elif choice == "other":
            label = "other"
            rid = rng.choice(self.fx.seen_by_member(spec.collection)[:-1]) if who == "member" \
                else str(uuid.UUID(int=4))
        else:
            label = choice
            rid = self.fx.scratch(spec.collection) if who == "admin" else self.fx.member_owned(spec.collection)
            if choice == "if-match":
                val = pick(QSTR, k // 4)
                label = f"if-match={val[0]}"
                headers["If-Match"] = "revision_number=" + val[1].replace("\n", " ").replace("\x00", "")
        return Case("DELETE", f"/v2.0/{spec.collection}/{quote(rid, safe='')}", f"/v2.0/{spec.collection}/{{id}}",
                    f"delete id={label}", who=who, headers=headers)

    def shapes(self, spec: ResourceSpec) -> list[tuple[str, bytes | None, str | None]]:
        n, c = spec.name, spec.plural
        return [
            ("[]", b"[]", JSON), ("true", b"true", JSON), ('"x"', b'"x"', JSON), ("5", b"5", JSON),
            ("{}", b"{}", JSON), ("null", b"null", JSON), ("empty", b"", JSON), ("no-body", None, JSON),
            ("bad-json", b"{", JSON), ("NaN", b"NaN", JSON), ("trailing", b'{"%s": {}} x' % n.encode(), JSON),
            ("inner-NaN", b'{"%s": {"name": NaN}}' % n.encode(), JSON), ("deep-2000", raw_deep(2000), JSON),
            ("deep-900", raw_deep(900), JSON), ("invalid-utf8", b'{"%s": {"name": "\xff\xfe"}}' % n.encode(), JSON),
            ("utf16", json.dumps({n: {"name": "x"}}).encode("utf-16"), JSON),
            ("bom", b"\xef\xbb\xbf" + jbytes({n: {"name": "bom"}}), JSON),
            ("text/plain", jbytes({n: {"name": "t"}}), "text/plain"),
            ("form", b"name=x", "application/x-www-form-urlencoded"),
            ("no-content-type", jbytes({n: {"name": "t"}}), None),
            ("multipart", b"--b\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b"),
            ("charset-utf16", jbytes({n: {"name": "t"}}), "application/json; charset=utf-16"),
            ("name:null", jbytes({n: None}), JSON), ("name:[]", jbytes({n: []}), JSON),
            ("name:str", jbytes({n: "x"}), JSON), ("name:5", jbytes({n: 5}), JSON),
            ("two-keys", jbytes({n: {}, "extra": 1}), JSON), ("both", jbytes({n: {}, c: [{}]}), JSON),
            ("bulk:[]", jbytes({c: []}), JSON), ("bulk:{}", jbytes({c: {}}), JSON),
            ("bulk:[1]", jbytes({c: [1]}), JSON),
            ("bulk:[null]", jbytes({c: [None]}), JSON), ("bulk:1000", jbytes({c: [1] * 1000}), JSON),
            ("bulk:[[]]", jbytes({c: [[]]}), JSON),
            ("dup-keys", b'{"%s": {"name": "a", "name": "b"}}' % n.encode(), JSON),
            ("big-body", jbytes({n: {"name": "n" * (2 << 20)}}), JSON),
        ]

    def body_shape(self, spec: ResourceSpec, k: int, rng: random.Random) -> Case:
        label, body, ctype = pick(self.shapes(spec), k)
        who = self.who(rng)
        if k // len(self.shapes(spec)) % 2 == 0 or spec.name == "agent":
            method, path, route = "POST", f"/v2.0/{spec.collection}", f"/v2.0/{spec.collection}"
            if spec.name == "agent":
                method, path, route = (pick(["POST", "PUT"], k // 2), f"/v2.0/agents/{self.fx.l2_agent}",
                                       "/v2.0/agents/{id}")
                if method == "POST":
                    path = route = "/v2.0/agents"
        else:
            rid = self.fx.scratch(spec.collection) if who == "admin" else self.fx.member_owned(spec.collection)
            method, path, route = "PUT", f"/v2.0/{spec.collection}/{rid}", f"/v2.0/{spec.collection}/{{id}}"
        return Case(method, path, route, f"body {label}", body=body, content_type=ctype, who=who)

    def tags(self, collection: str, k: int, rng: random.Random) -> Case:
        who = self.who(rng)
        if collection == "routers":
            rid = str(uuid.UUID(int=5))
        elif who == "member":
            rid = rng.choice(self.fx.seen_by_member(collection))
        else:
            rid = rng.choice([self.fx.admin_owned(collection), self.fx.scratch(collection)])
        op = pick(["GET all", "PUT all", "DELETE all", "GET one", "PUT one", "DELETE one", "PUT all", "PUT one"], k)
        base, route = f"/v2.0/{collection}/{rid}/tags", f"/v2.0/{collection}/{{id}}/tags"
        method, what = op.split()
        if what == "all":
            if method != "PUT":
                return Case(method, base, route, f"tags {op}", who=who)
            label, val = pick(HOSTILE + [("ok", ["a", "b"]), ("fixture", [self.fx.tag])], k // 8)
            body = rng.choice([{"tags": val}, {"tags": [val]}, val if k % 5 == 0 else {"tags": val, "x": 1}])
            return Case("PUT", base, route, f"tags PUT all={label}", body=jbytes(body), who=who)
        label, tag = pick(QSTR + [("fixture", self.fx.tag), ("long", "t" * 300)], k // 8)
        return Case(method, f"{base}/{quote(tag, safe='')}", route + "/{tag}", f"tag {method} {label}", who=who)

    def quotas(self, k: int, rng: random.Random) -> Case:
        who = self.who(rng, 0.25)
        fx = self.fx
        op = pick(["PUT", "PUT", "PUT", "GET", "DELETE", "GET list", "GET tenant", "GET default", "GET details",
                   "GET details.json", "PUT shape"], k)
        pid_label, pid = pick([("victim", fx.victim_project), ("victim", fx.victim_project)] + ID_VALUES, k // 11)
        if op in ("GET", "GET default", "GET details", "GET details.json") and rng.random() < 0.3:
            pid_label, pid = "member", fx.member_project
        qp = quote(pid, safe="")
        if op == "GET list":
            return Case("GET", "/v2.0/quotas", "/v2.0/quotas", "quotas list", who=who)
        if op == "GET tenant":
            return Case("GET", "/v2.0/quotas/tenant", "/v2.0/quotas/tenant", "quotas tenant", who=who)
        if op.startswith("GET "):
            suffix = op.split()[1]
            return Case("GET", f"/v2.0/quotas/{qp}/{suffix}", f"/v2.0/quotas/{{project_id}}/{suffix}",
                        f"quota {suffix} pid={pid_label}", who=who)
        route = "/v2.0/quotas/{project_id}"
        if op in ("GET", "DELETE"):
            return Case(op, f"/v2.0/quotas/{qp}", route, f"quota {op} pid={pid_label}", who=who)
        if op == "PUT shape":
            label, body, ctype = pick(self.shapes(NETWORK)[:12] + [
                ("quota:null", jbytes({"quota": None}), JSON), ("quota:[]", jbytes({"quota": []}), JSON),
                ("quota:{}", jbytes({"quota": {}}), JSON), ("quota:deep", jbytes({"quota": nest_dict(300)}), JSON),
            ], k // 11)
            return Case("PUT", f"/v2.0/quotas/{quote(fx.victim_project)}", route, f"quota body {label}",
                        body=body, content_type=ctype, who=who)
        key = pick(["network", "subnet", "port", "network", "bogus"], k // 3)
        label, val = pick(HOSTILE, k // 2 + rng.randrange(len(HOSTILE)))
        return Case("PUT", f"/v2.0/quotas/{quote(fx.victim_project)}", route, f"quota {key}={label}",
                    body=jbytes({"quota": {key: val}}), who=who)

    def availability(self, k: int, rng: random.Random) -> Case:
        who = self.who(rng, 0.2)
        if k % 2 == 0:
            label, val = pick(QSTR + [("fixture", self.fx.shared_net)], k // 2)
            n = fit(val, pick([1, 1, 5, 1000], k // 7))
            return Case("GET", "/v2.0/network-ip-availabilities", "/v2.0/network-ip-availabilities",
                        f"ip-availability network_id={label} x{n}", query=[("network_id", val)] * n, who=who)
        label, rid = pick(ID_VALUES + [("shared", self.fx.shared_net), ("member", self.fx.member_net)], k // 2)
        return Case("GET", f"/v2.0/network-ip-availabilities/{quote(rid, safe='')}",
                    "/v2.0/network-ip-availabilities/{id}", f"ip-availability id={label}",
                    query=[("fields", "total_ips")] if k % 3 == 0 else [], who=who)

    def dhcp(self, k: int, rng: random.Random) -> Case:
        who = self.who(rng, 0.2)
        fx = self.fx
        agent_label, agent = pick([("dhcp", fx.dhcp_agent), ("l2", fx.l2_agent), ("dhcp", fx.dhcp_agent)] + ID_VALUES,
                                  k // 4)
        qa = quote(agent, safe="")
        op = pick(["GET", "POST", "DELETE", "agents"], k)
        if op == "GET":
            return Case("GET", f"/v2.0/agents/{qa}/dhcp-networks", "/v2.0/agents/{id}/dhcp-networks",
                        f"dhcp-networks GET agent={agent_label}", who=who)
        if op == "POST":
            label, val = pick(HOSTILE + [("member-net", fx.member_net), ("shared", fx.shared_net)], k // 4)
            body = rng.choice([{"network_id": val}, val, {"network_id": fx.scratch_net, "x": val}])
            return Case("POST", f"/v2.0/agents/{qa}/dhcp-networks", "/v2.0/agents/{id}/dhcp-networks",
                        f"dhcp-networks POST network_id={label}", body=jbytes(body), who=who)
        if op == "DELETE":
            label, nid = pick(ID_VALUES + [("scratch", fx.scratch_net), ("shared", fx.shared_net)], k // 4)
            return Case("DELETE", f"/v2.0/agents/{qa}/dhcp-networks/{quote(nid, safe='')}",
                        "/v2.0/agents/{id}/dhcp-networks/{network_id}", f"dhcp-network DELETE {label}", who=who)
        label, nid = pick(ID_VALUES + [("shared", fx.shared_net), ("member", fx.member_net)], k // 4)
        return Case("GET", f"/v2.0/networks/{quote(nid, safe='')}/dhcp-agents", "/v2.0/networks/{id}/dhcp-agents",
                    f"dhcp-agents id={label}", who=who)

    def report_bodies(self) -> list[tuple[str, Any]]:
        ok = {"host": self.fx.host, "agent_type": "DHCP agent", "configurations": {}, "start_flag": False}
        out: list[tuple[str, Any]] = [("[]", []), ("true", True), ('"x"', "x"), ("5", 5), ("{}", {}), ("null", None)]
        for key in ("host", "agent_type", "configurations", "start_flag"):
            for label, val in HOSTILE:
                out.append((f"{key}={label}", {**ok, key: val}))
        return out

    def agent_channel(self, k: int, rng: random.Random) -> Case:
        fx = self.fx
        op = pick(["report", "port-status", "snapshot", "wait", "report", "port-status"], k)
        who = "member" if rng.random() < 0.1 else "admin"
        if op == "report":
            label, body = pick(self.report_bodies(), k // 6 * 7 + rng.randrange(7))
            raw = jbytes(body) if k % 13 else b"{"
            return Case("POST", "/agent-api/v1/report", "/agent-api/v1/report", f"report {label}", body=raw, who=who)
        if op == "port-status":
            bodies: list[tuple[str, Any]] = [("[]", []), ("true", True), ("5", 5), ('"x"', "x"), ("{}", {}),
                                             ("null", None)]
            for key in ("host", "active", "down"):
                bodies += [(f"{key}={label}", {"host": fx.host, "active": [fx.port], "down": [], key: val})
                           for label, val in HOSTILE]
            label, body = pick(bodies, k // 6 * 5 + rng.randrange(5))
            return Case("POST", "/agent-api/v1/port-status", "/agent-api/v1/port-status", f"port-status {label}",
                        body=jbytes(body), who=who)
        if op == "snapshot":
            label, host = pick(QSTR + [("fixture", fx.host)], k // 6)
            query = [("host", host)] * fit(host, pick([1, 1, 2, 50], k // 5))
            return Case("GET", "/agent-api/v1/snapshot", "/agent-api/v1/snapshot", f"snapshot host={label}",
                        query=query if k % 17 else [], who=who)
        # wait: a large `after` waits up to `timeout` (capped at 55 s) by design; pair it only with timeouts
        # that should end quickly, so a request still waiting after the client timeout is a real finding.
        quick = [("nan", "nan"), ("-1", "-1"), ("0", "0"), ("0.2", "0.2"), ("-inf", "-inf"), ("x", "x"), ("empty", ""),
                 ("-nan", "-nan"), ("1e-308", "1e-308"), ("NaN", "NaN"), ("-1e308", "-1e308")]
        anything = quick + [("inf", "inf"), ("1e308", "1e308"), ("10^40", "1" + "0" * 40), ("55", "55")]
        big_after = [("huge", str(2**70)), ("2^63", str(2**63)), ("2^63-1", str(2**63 - 1))]
        small_after = [("0", "0"), ("-1", "-1"), ("-huge", "-" + str(2**70)), ("x", "x"), ("1.5", "1.5"),
                       ("empty", ""), ("nan", "nan")]
        if k % 2 == 0:
            (alabel, after), (tlabel, tmo) = pick(big_after, k // 2), pick(quick, k // 6 + rng.randrange(3))
        else:
            (alabel, after), (tlabel, tmo) = pick(small_after, k // 2), pick(anything, k // 14 + rng.randrange(3))
        return Case("GET", "/agent-api/v1/wait", "/agent-api/v1/wait", f"wait after={alabel} timeout={tlabel}",
                    query=[("after", after), ("timeout", tmo)], who=who)

    def routes(self) -> list[tuple[str, str]]:
        """Every route (template, concrete path), for the method sweep (HEAD/OPTIONS/PATCH/...)."""
        fx = self.fx
        out = [("/", "/"), ("/v2.0", "/v2.0"), ("/v2.0/", "/v2.0/"), ("/v2.0/extensions", "/v2.0/extensions"),
               ("/v2.0/extensions.json", "/v2.0/extensions.json"),
               ("/v2.0/extensions/{alias}", "/v2.0/extensions/binding"),
               ("/v2.0/quotas", "/v2.0/quotas"), ("/v2.0/quotas/tenant", "/v2.0/quotas/tenant"),
               ("/v2.0/quotas/{project_id}", f"/v2.0/quotas/{fx.victim_project}"),
               ("/v2.0/quotas/{project_id}/default", f"/v2.0/quotas/{fx.victim_project}/default"),
               ("/v2.0/quotas/{project_id}/details", f"/v2.0/quotas/{fx.victim_project}/details"),
               ("/v2.0/quotas/{project_id}/details.json", f"/v2.0/quotas/{fx.victim_project}/details.json"),
               ("/v2.0/network-ip-availabilities", "/v2.0/network-ip-availabilities"),
               ("/v2.0/network-ip-availabilities/{id}", f"/v2.0/network-ip-availabilities/{fx.shared_net}"),
               ("/v2.0/agents/{id}/dhcp-networks", f"/v2.0/agents/{fx.dhcp_agent}/dhcp-networks"),
               ("/v2.0/agents/{id}/dhcp-networks/{network_id}",
                f"/v2.0/agents/{fx.dhcp_agent}/dhcp-networks/{fx.shared_net}"),
               ("/v2.0/networks/{id}/dhcp-agents", f"/v2.0/networks/{fx.shared_net}/dhcp-agents"),
               ("/agent-api/v1/report", "/agent-api/v1/report"), ("/agent-api/v1/snapshot", "/agent-api/v1/snapshot"),
               ("/agent-api/v1/wait", "/agent-api/v1/wait"), ("/agent-api/v1/port-status", "/agent-api/v1/port-status"),
               ("/agent-api/v1/{unknown}", "/agent-api/v1/nope"), ("/v2.0/{unknown}", "/v2.0/address-groups"),
               ("/v2.0/{unknown}/{id}", "/v2.0/address-groups/x"), ("/{unknown}", "/nope"),
               ("/v2.0/routers/{id}/{action}", f"/v2.0/routers/{uuid.UUID(int=5)}/add_router_interface"),
               ("/v2.0/routers/{id}/{action}", f"/v2.0/routers/{uuid.UUID(int=5)}/add_extraroutes"),
               ("/v2.0/routers/{id}/l3-agents", f"/v2.0/routers/{uuid.UUID(int=5)}/l3-agents"),
               ("/v2.0/agents/{id}/l3-routers", f"/v2.0/agents/{fx.dhcp_agent}/l3-routers"),
               ("/v2.0/agents/{id}/l3-routers/{router_id}",
                f"/v2.0/agents/{fx.dhcp_agent}/l3-routers/{uuid.UUID(int=5)}")]
        for c in ("networks", "subnets", "ports", "agents", "security-groups", "security-group-rules"):
            out += [(f"/v2.0/{c}", f"/v2.0/{c}"), (f"/v2.0/{c}.json", f"/v2.0/{c}.json"),
                    (f"/v2.0/{c}/{{id}}", f"/v2.0/{c}/{fx.admin_owned(c)}"),
                    (f"/v2.0/{c}/{{id}}.json", f"/v2.0/{c}/{fx.admin_owned(c)}.json"),
                    (f"/v2.0/{c}/{{id}}/tags", f"/v2.0/{c}/{fx.admin_owned(c)}/tags"),
                    (f"/v2.0/{c}/{{id}}/tags/{{tag}}", f"/v2.0/{c}/{fx.admin_owned(c)}/tags/{fx.tag}")]
        return out

    def method_sweep(self, route: str, path: str, methods: Sequence[str], k: int, rng: random.Random) -> Case:
        method = pick(methods, k)
        who = pick(["admin", "admin", "member", "anon", "badtoken"], k // len(methods) + rng.randrange(5))
        body = None
        if method in ("POST", "PUT", "PATCH"):
            body = jbytes(pick([{}, [], None, {"x": 1}], k // 3))
        safe = method in ("HEAD", "OPTIONS", "PATCH", "GET")
        # Writes to the fixtures themselves would destroy what later cases use: point them at the scratch copies.
        if not safe:
            path = path.replace(self.fx.shared_net, self.fx.scratch_net).replace(self.fx.port, self.fx.scratch_port)
            path = path.replace(self.fx.sub4, self.fx.scratch_sub)
        return Case(method, path, route, f"method {method} as {who}", body=body, who=who)

    def discovery(self, k: int, rng: random.Random) -> Case:
        label, alias = pick(QSTR + ID_VALUES, k)
        who = pick(["admin", "member", "anon", "badtoken"], k // 3)
        return Case("GET", f"/v2.0/extensions/{quote(alias, safe='')}", "/v2.0/extensions/{alias}",
                    f"extension alias={label}", who=who)

    def auth(self, k: int, rng: random.Random) -> Case:
        token_label, token = pick([("long", "t" * 10000), ("unicode-ish", "tok\u00e9n"), ("spaces", "a b"),
                                   ("empty", ""), ("uuid", str(uuid.UUID(int=11))), ("garbage", "gAAAA.x.y")], k)
        route, path = pick(self.routes(), k // 6)
        case = Case(pick(["GET", "POST", "PUT", "DELETE"], k // 3), path, route, f"token={token_label}",
                    who="anon", body=b"{}")
        case.headers["X-Auth-Token"] = token
        if case.method in ("PUT", "DELETE", "POST"):  # unauthenticated writes must not land on fixtures
            case.path = case.path.replace(self.fx.shared_net, self.fx.scratch_net)
        return case

    # -- the stream -------------------------------------------------------------------------------------
    def known(self) -> list[Case]:
        """Regressions first: each of these once answered 5xx or never answered."""
        fx = self.fx
        return [
            Case("GET", "/v2.0/networks", "/v2.0/networks", "page_reverse=maybe", query=[("page_reverse", "maybe")]),
            Case("GET", "/v2.0/networks", "/v2.0/networks", "limit=2^64", query=[("limit", str(2**64))]),
            Case("GET", "/v2.0/networks", "/v2.0/networks", "changed_since=min+14",
                 query=[("changed_since", "0001-01-01T00:00:00+14:00")]),
            Case("GET", "/v2.0/networks", "/v2.0/networks", "sort shared asc marker=own",
                 query=[("sort_key", "shared"), ("limit", "1"), ("marker", fx.shared_net)]),
            Case("GET", "/v2.0/ports", "/v2.0/ports", "filter fixed_ips=ip x1000",
                 query=[("fixed_ips", "ip_address=10.77.0.5")] * 1000),
            Case("PUT", f"/v2.0/quotas/{fx.victim_project}", "/v2.0/quotas/{project_id}", "quota network=1e30",
                 body=b'{"quota": {"network": 1e30}}'),
            Case("GET", f"/v2.0/agents/{fx.dhcp_agent}/tags", "/v2.0/agents/{id}/tags", "tags GET all"),
            Case("PUT", f"/v2.0/agents/{fx.dhcp_agent}/tags/{fx.tag}", "/v2.0/agents/{id}/tags/{tag}",
                 "tag PUT fixture"),
            Case("POST", "/agent-api/v1/report", "/agent-api/v1/report", "report []", body=b"[]"),
            Case("POST", "/agent-api/v1/report", "/agent-api/v1/report", "report true", body=b"true"),
            Case("POST", "/agent-api/v1/port-status", "/agent-api/v1/port-status", "port-status []", body=b"[]"),
            Case("POST", "/agent-api/v1/port-status", "/agent-api/v1/port-status", "port-status true", body=b"true"),
            Case("POST", "/agent-api/v1/port-status", "/agent-api/v1/port-status", "port-status down=5",
                 body=b'{"down": 5}'),
            Case("POST", "/agent-api/v1/port-status", "/agent-api/v1/port-status", "port-status active=[1,2]",
                 body=b'{"active": [1, 2]}'),
            Case("POST", "/v2.0/ports", "/v2.0/ports", "create binding:profile=deep-dict-300",
                 body=jbytes({"port": {"network_id": fx.scratch_net, "binding:profile": nest_dict(300)}})),
            Case("GET", "/agent-api/v1/wait", "/agent-api/v1/wait", "wait after=huge timeout=nan",
                 query=[("after", str(2**70)), ("timeout", "nan")]),
        ]

    def slots(self) -> list[Slot]:
        out: list[Slot] = []
        params = ["limit", "marker", "page_reverse", "fields", "sort_dir", "tags", "tags-any", "not-tags",
                  "not-tags-any", "changed_since", "combo", "sort_key", "fuzz_unknown"]
        for spec in SPECS:
            for attr in [*spec.attrs, "fuzz_unknown"]:
                out += [slot(self.create_attr, spec, attr), slot(self.update_attr, spec, attr),
                        slot(self.filter_attr, spec, attr)]
                if attr != "fuzz_unknown":
                    out.append(slot(self.sort_attr, spec, attr))
            out += [slot(self.list_param, spec, param) for param in params]
            out += [slot(self.show, spec), slot(self.body_shape, spec)] * 3 + [slot(self.delete, spec)]
        out += [slot(self.tags, collection) for collection in TAGGABLE] * 4
        out += [slot(self.quotas), slot(self.dhcp), slot(self.availability)] * 6
        out += [slot(self.agent_channel)] * 12
        for route, path in self.routes():
            out += [slot(self.method_sweep, route, path, ("HEAD", "OPTIONS", "PATCH")),
                    slot(self.method_sweep, route, path, ("GET", "POST", "PUT", "DELETE"))]
        out += [slot(self.discovery), slot(self.auth)]
        return out

    def stream(self) -> Iterator[Case]:
        rng = random.Random(self.seed)
        yield from self.known()
        slots = self.slots()
        offsets = [rng.randrange(10_000) for _ in slots]
        rnd = 0
        while True:
            order = list(range(len(slots)))
            rng.shuffle(order)
            for i in order:
                yield slots[i](offsets[i] + rnd, rng)
            rnd += 1


# -- running ------------------------------------------------------------------------------------------------
def neutron_error(body: bytes) -> dict[str, Any] | None:
    """The inner NeutronError if the body is exactly {"NeutronError": {"type", "message", "detail"}}."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"NeutronError"} or not isinstance(doc["NeutronError"], dict):
        return None
    err: dict[str, Any] = doc["NeutronError"]
    if not all(isinstance(err.get(k), str) for k in ("type", "message", "detail")):
        return None
    return err


@dataclass
class Finding:
    outcome: str                    # 5xx | timeout | bad-shape | connection
    status: int | None
    error_type: str
    case: Case
    answer: str
    request_id: str = ""
    count: int = 1
    kinds: list[str] = field(default_factory=list)
    cause: str = ""
    cause_message: str = ""

    def key(self) -> tuple[str, str, str, str, str]:
        return (f"{self.case.method} {self.case.route}", self.outcome, str(self.status), self.error_type,
                self.cause or self.case.kind)


@dataclass
class Report:
    requests: int = 0
    skipped: int = 0
    refused: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    raw: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    wedged: list[str] = field(default_factory=list)
    aborted: str = ""

    def findings(self) -> list[Finding]:
        grouped: dict[tuple[str, ...], Finding] = {}
        for f in self.raw.values():
            key = f.key()
            have = grouped.get(key)
            if have is None:
                grouped[key] = Finding(f.outcome, f.status, f.error_type, f.case, f.answer, f.request_id, f.count,
                                       [f.case.kind], f.cause, f.cause_message)
                continue
            have.count += f.count
            have.kinds.append(f.case.kind)
            if f.case.size() < have.case.size():
                have.case, have.answer, have.request_id = f.case, f.answer, f.request_id
        return sorted(grouped.values(), key=lambda f: (f.outcome, f.case.route, f.case.method, str(f.status)))

    @property
    def failed(self) -> bool:
        return bool(self.raw or self.wedged or self.aborted)

    def render(self) -> str:
        found = self.findings()
        lines = [f"requests sent: {self.requests} in {self.seconds:.1f} s (skipped {self.skipped} repeats of known "
                 f"timeouts; {self.refused} the HTTP client refused to send)",
                 "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
                 f"5xx: {self.outcomes['5xx']}  timeouts: {self.outcomes['timeout']}  "
                 f"non-Neutron-shaped errors: {self.outcomes['bad-shape']}  connection errors: "
                 f"{self.outcomes['connection']}",
                 f"distinct findings: {len(found)}"]
        for msg in self.wedged:
            lines.append(f"WEDGED: {msg}")
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}")
        for i, f in enumerate(found, 1):
            status = "no answer" if f.status is None else str(f.status)
            kinds = sorted(set(f.kinds))
            shown = ", ".join(kinds[:6]) + (f", ... (+{len(kinds) - 6})" if len(kinds) > 6 else "")
            lines.append(f"\n[{i}] {f.outcome} {status} {f.error_type}  {f.case.method} {f.case.route}  "
                         f"(x{f.count}; inputs: {shown})")
            if f.cause:
                lines.append(f"    cause: {f.cause}: {f.cause_message}")
            lines.append(f"    repro: {f.case.describe()}")
            lines.append(f"    got:   {f.answer}")
        return "\n".join(lines)

    def as_json(self) -> list[dict[str, Any]]:
        return [{"outcome": f.outcome, "status": f.status, "error_type": f.error_type, "method": f.case.method,
                 "route": f.case.route, "path": f.case.url_path(), "who": f.case.who, "headers": f.case.headers,
                 "content_type": f.case.content_type,
                 "body": None if f.case.body is None else f.case.body.decode("utf-8", "backslashreplace"),
                 "answer": f.answer, "count": f.count, "inputs": sorted(set(f.kinds)), "cause": f.cause,
                 "cause_message": f.cause_message}
                for f in self.findings()]


class Session:
    """Tokens and plain HTTP against one server; the fixtures it creates for the fuzzer."""

    def __init__(self, base: str, admin_password: str, timeout: float) -> None:
        self.base = base.rstrip("/")
        self.admin_password = admin_password
        self.timeout = timeout
        self.client = httpx.Client(timeout=timeout)
        self.tokens: dict[str, str] = {}
        self.member: tuple[str, str, str] | None = None   # user, password, project name

    def close(self) -> None:
        self.client.close()

    def token(self, user: str, password: str, project: str) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        resp = self.client.post(f"{self.base}/identity/v3/auth/tokens", json=body)
        resp.raise_for_status()
        return resp.headers["X-Subject-Token"]

    def login(self) -> None:
        self.tokens["admin"] = self.token("admin", self.admin_password, "admin")
        if self.member is not None:
            self.tokens["member"] = self.token(*self.member)

    def ok(self, method: str, path: str, body: Any = None, who: str = "admin") -> Any:
        resp = self.client.request(method, self.base + path, json=body, headers={"X-Auth-Token": self.tokens[who]})
        if resp.status_code >= 300:
            raise RuntimeError(f"fixture setup: {method} {path} -> {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    def make_member(self, name: str) -> str:
        ident = "/identity/v3"
        project = self.ok("POST", f"{ident}/projects", {"project": {"name": name, "domain_id": "default"}})["project"]
        user = self.ok("POST", f"{ident}/users", {"user": {"name": name, "password": "pw-" + name,
                                                           "domain_id": "default",
                                                           "default_project_id": project["id"]}})["user"]
        role = next(r for r in self.ok("GET", f"{ident}/roles")["roles"] if r["name"] == "member")
        self.ok("PUT", f"{ident}/projects/{project['id']}/users/{user['id']}/roles/{role['id']}")
        self.member = (name, "pw-" + name, name)
        self.tokens["member"] = self.token(*self.member)
        return str(project["id"])

    def setup(self) -> Fixtures:
        self.login()
        suffix = uuid.uuid4().hex[:8]
        member_project = self.make_member(f"fuzz-{suffix}")
        me = self.client.get(f"{self.base}/identity/v3/auth/tokens",
                             headers={"X-Auth-Token": self.tokens["admin"], "X-Subject-Token": self.tokens["admin"]})
        me.raise_for_status()
        fx = Fixtures(admin_project=me.json()["token"]["project"]["id"], member_project=member_project,
                      victim_project=uuid.uuid4().hex, host=f"fuzz-host-{suffix}", tag="fuzz-tag")
        self.repair(fx)
        return fx

    def exists(self, collection: str, rid: str) -> bool:
        if not rid:
            return False
        resp = self.client.get(f"{self.base}/v2.0/{collection}/{rid}", headers={"X-Auth-Token": self.tokens["admin"]})
        return resp.status_code == 200

    def repair(self, fx: Fixtures) -> None:
        """(Re)create whatever fixture is missing and undo updates that would hide fixtures from the member."""
        for agent_type, conf in (("DHCP agent", {"dhcp_driver": "dnsmasq"}),
                                 ("Linux bridge agent", {"tunneling_ip": "192.0.2.9", "tunnel_types": ["vxlan"]})):
            rid = str(self.ok("POST", "/agent-api/v1/report", {"host": fx.host, "agent_type": agent_type,
                                                               "configurations": conf, "start_flag": True})["id"])
            if agent_type == "DHCP agent":
                fx.dhcp_agent = rid
            else:
                fx.l2_agent = rid
        def net(name: str, shared: bool, who: str = "admin") -> str:
            return str(self.ok("POST", "/v2.0/networks", {"network": {"name": name, "shared": shared}}
                               if who == "admin" else {"network": {"name": name}}, who)["network"]["id"])

        def sub(network: str, cidr: str, who: str = "admin", **extra: Any) -> str:
            body = {"subnet": {"network_id": network, "ip_version": 6 if ":" in cidr else 4, "cidr": cidr, **extra}}
            return str(self.ok("POST", "/v2.0/subnets", body, who)["subnet"]["id"])

        def port(network: str, who: str = "admin", extra: dict[str, Any] | None = None) -> str:
            body = {"port": {"network_id": network, **(extra or {})}}
            return str(self.ok("POST", "/v2.0/ports", body, who)["port"]["id"])

        if not self.exists("networks", fx.shared_net):
            fx.shared_net, fx.sub4, fx.sub6, fx.port, fx.member_port_shared = net("fz-shared", True), "", "", "", ""
        self.ok("PUT", f"/v2.0/networks/{fx.shared_net}", {"network": {"shared": True, "admin_state_up": True}})
        if not self.exists("subnets", fx.sub4):
            fx.sub4 = sub(fx.shared_net, "10.77.0.0/24", allocation_pools=[{"start": "10.77.0.10",
                                                                            "end": "10.77.0.250"}])
        if not self.exists("subnets", fx.sub6):
            fx.sub6 = sub(fx.shared_net, "2001:db8:77::/64")
        if not self.exists("ports", fx.port):
            fx.port = port(fx.shared_net, extra={"binding:host_id": fx.host, "fixed_ips": [{"subnet_id": fx.sub4}]})
            self.ok("PUT", f"/v2.0/ports/{fx.port}/tags/{fx.tag}")
            self.ok("PUT", f"/v2.0/networks/{fx.shared_net}/tags/{fx.tag}")
        if not self.exists("networks", fx.private_net):
            fx.private_net = net("fz-private", False)
            fx.private_sub = sub(fx.private_net, "10.78.0.0/24")
        if not self.exists("networks", fx.scratch_net):
            fx.scratch_net, fx.scratch_sub, fx.scratch_port = net("fz-scratch", False), "", ""
        if not self.exists("subnets", fx.scratch_sub):
            fx.scratch_sub = sub(fx.scratch_net, f"10.79.{random.Random(fx.scratch_net).randrange(256)}.0/24")
        if not self.exists("ports", fx.scratch_port):
            fx.scratch_port = port(fx.scratch_net)
        if not self.exists("networks", fx.member_net):
            fx.member_net, fx.member_sub, fx.member_port = net("fz-member", False, "member"), "", ""
        if not self.exists("subnets", fx.member_sub):
            fx.member_sub = sub(fx.member_net, "10.80.0.0/24", "member")
        if not self.exists("ports", fx.member_port):
            fx.member_port = port(fx.member_net, "member")
        if not self.exists("ports", fx.member_port_shared):
            fx.member_port_shared = port(fx.shared_net, "member")

        def group(who: str) -> str:
            body = {"security_group": {"name": "fz"}}
            return str(self.ok("POST", "/v2.0/security-groups", body, who)["security_group"]["id"])

        def rule(group_id: str, who: str) -> str:
            body = {"security_group_rule": {"security_group_id": group_id, "direction": "ingress", "protocol": "tcp",
                                            "port_range_min": 22, "port_range_max": 22, "remote_group_id": group_id}}
            return str(self.ok("POST", "/v2.0/security-group-rules", body, who)["security_group_rule"]["id"])

        for attr, who in (("group", "admin"), ("scratch_group", "admin"), ("member_group", "member")):
            rule_attr = attr.replace("group", "rule")
            if not self.exists("security-groups", getattr(fx, attr)):
                setattr(fx, attr, group(who))
                setattr(fx, rule_attr, "")
            if not self.exists("security-group-rules", getattr(fx, rule_attr)):
                setattr(fx, rule_attr, rule(getattr(fx, attr), who))
        # The admin's port is in the admin's group (best effort: the fuzzer may have made that impossible).
        self.client.put(f"{self.base}/v2.0/ports/{fx.port}", headers={"X-Auth-Token": self.tokens["admin"]},
                        json={"port": {"security_groups": [fx.group], "port_security_enabled": True}})


SIGNATURE = re.compile(r'File "([^"]*neutrino/[^"]*)", line (\d+), in (\S+)')


def causes_from_log(log_text: str) -> dict[str, tuple[str, str]]:
    """request id -> ("ExceptionType at file.py:line in function", message) from "unexpected error req-..." records."""
    out: dict[str, tuple[str, str]] = {}
    for record in re.split(r"\n(?=\d\d:\d\d:\d\d )", log_text):  # one record per "HH:MM:SS LEVEL ..." line
        m = re.search(r"unexpected error (req-[0-9a-f-]+)", record)
        if not m:
            continue
        frames = SIGNATURE.findall(record)
        exc_lines = [ln for ln in record.splitlines()
                     if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Warning)\b", ln)]
        exc, _, message = (exc_lines[-1] if exc_lines else "?").partition(":")
        where = f"{Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]}" if frames else "?"
        out[m.group(1)] = (f"{exc} at {where}", message.strip().replace("\n", "\\n")[:160])
    return out


class Fuzzer:
    """Sends a generator's cases, classifies the answers, keeps one reproduction per finding."""

    def __init__(self, session: Session, fixtures: Fixtures, seed: int, *, log_path: Path | None = None,
                 restart: Callable[[], str] | None = None, max_timeouts: int | None = None,
                 repair_every: int = 250, progress: Callable[[str], None] | None = None,
                 minimize: bool = True) -> None:
        self.minimize_findings = minimize
        self.s = session
        self.fx = fixtures
        self.gen = Generator(fixtures, seed)
        self.log_path = log_path
        self.restart = restart
        self.max_timeouts = max_timeouts
        self.repair_every = repair_every
        self.progress = progress
        self.report = Report()
        self.timed_out: set[tuple[str, str, str]] = set()

    def headers(self, case: Case) -> dict[bytes, bytes]:
        out: dict[str, str] = {}
        if case.who in ("admin", "member"):
            out["X-Auth-Token"] = self.s.tokens[case.who]
        elif case.who == "badtoken":
            out["X-Auth-Token"] = "not-a-token"
        if case.content_type is not None and case.body is not None:
            out["Content-Type"] = case.content_type
        out.update(case.headers)
        return {k.encode(): v.encode() for k, v in out.items()}  # raw UTF-8 where a header is not ASCII

    def healthy(self) -> bool:
        try:
            self.s.client.get(self.s.base + "/", timeout=3)
            self.s.client.get(self.s.base + "/v2.0/networks", params={"limit": "1"},
                              headers={"X-Auth-Token": self.s.tokens["admin"]}, timeout=3)
            return True
        except httpx.HTTPError:
            return False

    def record(self, outcome: str, status: int | None, etype: str, case: Case, answer: str, rid: str = "") -> None:
        self.report.outcomes[outcome] += 1
        key = (case.method, case.route, outcome, str(status), etype, case.kind)
        have = self.report.raw.get(key)
        if have is None:
            self.report.raw[key] = Finding(outcome, status, etype, case, answer, rid)
            return
        have.count += 1
        if case.size() < have.case.size():
            have.case, have.answer, have.request_id = case, answer, rid

    def send(self, case: Case) -> None:
        self.report.requests += 1
        url = self.s.base + case.url_path()
        try:
            resp = self.s.client.request(case.method, url, content=case.body, headers=self.headers(case))
        except httpx.TimeoutException:
            self.record("timeout", None, "-", case, f"no answer within {self.s.timeout:g} s")
            self.timed_out.add((case.method, case.route, case.kind))
            self.after_timeout(case)
            return
        except (httpx.TransportError, httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError) as exc:
            if isinstance(exc, httpx.LocalProtocolError | httpx.InvalidURL | UnicodeEncodeError):
                self.report.requests -= 1   # the client refused to send it; not the server's business
                self.report.refused += 1
                return
            self.record("connection", None, type(exc).__name__, case, str(exc)[:300])
            if not self.healthy():
                self.after_timeout(case)
            return
        self.report.statuses[resp.status_code] += 1
        if resp.status_code < 400 or (case.method == "HEAD" and resp.status_code < 500):
            return
        err = neutron_error(resp.content)
        etype = err["type"] if err else "-"
        answer = resp.text[:300].replace("\n", "\\n")
        if resp.status_code >= 500:
            rid = ""
            if err:
                m = re.search(r"req-[0-9a-f-]{36}", err["message"])
                rid = m.group(0) if m else ""
            self.record("5xx", resp.status_code, etype, case, answer, rid)
        elif err is None and case.method != "HEAD":
            shape = resp.headers.get("content-type", "?").split(";")[0]
            self.record("bad-shape", resp.status_code, f"not NeutronError ({shape})", case, answer or "(empty body)")

    def after_timeout(self, case: Case) -> None:
        if self.healthy():
            return
        msg = f"the server stopped answering after {case.method} {case.url_path()[:200]}"
        self.report.wedged.append(msg)
        if self.restart is None:
            self.report.aborted = msg
            return
        self.s.base = self.restart().rstrip("/")
        self.s.close()
        self.s.client = httpx.Client(timeout=self.s.timeout)
        self.s.login()

    def replay(self, case: Case) -> tuple[int | None, str]:
        try:
            resp = self.s.client.request(case.method, self.s.base + case.url_path(), content=case.body,
                                         headers=self.headers(case))
        except httpx.HTTPError:
            return None, "-"
        err = neutron_error(resp.content)
        return resp.status_code, err["type"] if err else "-"

    def minimize(self) -> None:
        """Shrink each 5xx/bad-shape reproduction's query string while it still fails the same way."""
        for f in self.report.raw.values():
            if f.outcome not in ("5xx", "bad-shape") or not f.case.query:
                continue
            want = (f.status, f.error_type.split(" ")[0] if f.outcome == "5xx" else "-")
            shrunk = f.case
            for candidate in self.shrinks(shrunk):
                if candidate.size() < shrunk.size() and self.replay(candidate) == want:
                    shrunk = candidate
            if shrunk is not f.case:
                again = [c for c in self.shrinks(shrunk) if c.size() < shrunk.size()]
                for candidate in again:
                    if candidate.size() < shrunk.size() and self.replay(candidate) == want:
                        shrunk = candidate
                f.case = shrunk

    @staticmethod
    def shrinks(case: Case) -> Iterator[Case]:
        def with_query(query: list[tuple[str, str]]) -> Case:
            return Case(case.method, case.path, case.route, case.kind, query, case.body, case.content_type,
                        case.who, dict(case.headers))
        last: dict[str, str] = {}
        for key, value in case.query:
            last[key] = value
        yield with_query(list(last.items()))
        yield with_query(list(dict.fromkeys(case.query)))
        if len(case.query) <= 12:
            for i in range(len(case.query)):
                yield with_query(case.query[:i] + case.query[i + 1:])

    def run(self, n: int) -> Report:
        started = time.monotonic()
        stream = self.gen.stream()
        sent = 0
        while sent < n and not self.report.aborted:
            case = next(stream)
            if (case.method, case.route, case.kind) in self.timed_out:
                self.report.skipped += 1
                continue
            if case.who == "member" and "member" not in self.s.tokens:
                case.who = "admin"
            self.send(case)
            sent += 1
            if self.max_timeouts is not None and self.report.outcomes["timeout"] >= self.max_timeouts:
                self.report.aborted = f"{self.max_timeouts} requests timed out; stopped early"
            if sent % self.repair_every == 0 and not self.report.aborted:
                try:
                    self.s.repair(self.fx)
                except (RuntimeError, httpx.HTTPError) as exc:
                    if self.progress:
                        self.progress(f"fixture repair failed: {exc}")
            if self.progress and sent % 500 == 0:
                self.progress(f"{sent}/{n} sent, {len(self.report.raw)} raw findings")
        self.report.seconds = time.monotonic() - started
        if self.minimize_findings and not self.report.aborted:
            self.minimize()
        self.attach_causes()
        return self.report

    def attach_causes(self) -> None:
        if self.log_path is None or not self.log_path.exists():
            return
        causes = causes_from_log(self.log_path.read_text(errors="replace"))
        for f in self.report.raw.values():
            if f.request_id in causes:
                f.cause, f.cause_message = causes[f.request_id]
