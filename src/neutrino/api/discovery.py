"""Version discovery and the extension list: exactly what this server implements, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UPDATED = "2026-11-24T00:00:00-00:00"


@dataclass(frozen=True, slots=True)
class Extension:
    alias: str
    name: str
    description: str

    def as_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "name": self.name, "description": self.description,
                "updated": UPDATED, "links": []}


EXTENSIONS: tuple[Extension, ...] = (
    Extension("agent", "agent", "The agent management extension."),
    Extension("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    Extension("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    Extension("dhcp_agent_scheduler", "DHCP Agent Scheduler", "Schedule networks among dhcp agents"),
    Extension("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    Extension("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
              "Extension of the router abstraction for specifying whether SNAT should occur on the external "
              "gateway"),
    Extension("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    Extension("extraroute-atomic", "Atomically add/remove extra routes",
              "Edit extra routes of a router on server side by atomically adding/removing extra routes"),
    Extension("extra_dhcp_opt", "Neutron Extra DHCP options",
              "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be "
              "specified (e.g. tftp-server, server-ip-address, bootfile-name)"),
    Extension("fields", "Fields", "Restrict the attributes returned with the fields query parameter."),
    Extension("filter-validation", "Filter parameters validation",
              "Provides validation on filter parameters."),
    Extension("l3_agent_scheduler", "L3 Agent Scheduler", "Schedule routers among l3 agents"),
    Extension("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    Extension("net-mtu-writable", "Network MTU (writable)",
              "Provides a writable MTU attribute for a network resource."),
    Extension("network-ip-availability", "Network IP Availability",
              "Provides IP availability data for each network and subnet."),
    Extension("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    Extension("port-security", "Port Security", "Provides port security"),
    Extension("port-security-groups-filtering", "Port filtering on security groups",
              "Provides security groups filtering when listing ports"),
    Extension("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    Extension("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    Extension("quotas", "Quota management support", "Expose functions for quotas management per project"),
    Extension("quota_details", "Quota details management support",
              "Expose functions for quotas usage statistics per project"),
    Extension("router", "Neutron L3 Router",
              "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external "
              "networks via a NAT gateway."),
    Extension("revision-if-match", "If-Match constraints based on revision_number",
              "Extension indicating that If-Match based on revision_number is supported."),
    Extension("security-group", "security-group", "The security groups extension."),
    Extension("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    Extension("standard-attr-description", "standard-attr-description",
              "Extension to add descriptions to standard attributes"),
    Extension("standard-attr-revisions", "Resource revision numbers",
              "This extension will display the revision number of neutron resources."),
    Extension("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, "
              "network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip",
              "Enables to set tag on resources with standard attribute."),
    Extension("standard-attr-timestamp", "Resource timestamps",
              "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard "
              "attributes."),
    Extension("stateful-security-group", "Stateful security group",
              "Indicates if the security group is stateful or not"),
)

BY_ALIAS = {e.alias: e for e in EXTENSIONS}

# Collections listed by GET /v2.0.
COLLECTIONS = (("network", "networks"), ("subnet", "subnets"), ("port", "ports"), ("quota", "quotas"),
               ("agent", "agents"), ("router", "routers"), ("floatingip", "floatingips"),
               ("network_ip_availability", "network-ip-availabilities"), ("security_group", "security-groups"),
               ("security_group_rule", "security-group-rules"))


def versions(base_url: str) -> dict[str, Any]:
    return {"versions": [{"id": "v2.0", "status": "CURRENT",
                          "links": [{"href": f"{base_url}/v2.0/", "rel": "self"}]}]}


def resources(base_url: str) -> dict[str, Any]:
    return {"resources": [{"name": name, "collection": coll,
                           "links": [{"href": f"{base_url}/v2.0/{coll}", "rel": "self"}]}
                          for name, coll in COLLECTIONS]}
