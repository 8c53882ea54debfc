"""The kernel and daemons: observe what is there, diff against a HostState, apply the smallest change.
Only ``netlink`` imports pyroute2; only objects with neutrino's names are ever removed.
"""
