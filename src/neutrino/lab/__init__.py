"""Lab instances: namespaces standing in for VMs, so a single Linux host can show the data path end to end.

This package plays the hypervisor, not the agent: it creates an instance's port through the API and the
instance's side of the wire (``lab-NAME`` namespace, ``eth0``, the ``tap…`` peer left on the host for the
agent to plug), and runs a real DHCP client inside. ``instances`` is the kernel side, ``lifecycle`` the
API side; ``neutrino instance …`` is the command.
"""
