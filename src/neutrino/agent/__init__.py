"""The host agent: ``source`` (where intent comes from), ``loop`` (the level-triggered pass),
``pipeline`` (compile one HostState, then the planes converge it; cleanup), ``runtime`` (start it).
"""
