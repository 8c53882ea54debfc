"""Address and MAC management, pure parts.

``pools`` computes and validates allocation pools and walks candidate addresses in the order the server
tries them; ``macs`` generates MACs under a base prefix and EUI-64 interface ids.
Nothing here touches the database: the services layer checks candidates against the ``ipallocations``
unique key inside its write transaction, so the allocation is correct under any concurrency.
"""
