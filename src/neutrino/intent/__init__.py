"""The contract between the server and its agents (stdlib only).

``model``: the per-host snapshot and its specs, typed ids, device owners and agent types; ``report``: what
an agent sends back; ``source``: the ``IntentSource`` an agent reads from (in-process or HTTP); ``codec``:
their JSON form, driven by the dataclasses. Server code builds these, agent code reads them; neither side
imports the other, and nothing here imports anything of neutrino outside this package.
"""
