"""Pure compilers: ``compile_host(snapshot, host, …) -> HostState`` and the dnsmasq renderers. No I/O,
no clock, deterministic output (everything sorted): same intent, same bytes.
"""
