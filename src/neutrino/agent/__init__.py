"""The host agent: ``model`` (the intent it holds), ``source`` (where intent comes from), ``loop`` (the
level-triggered pass), ``drivers`` (compile + converge), ``runtime`` (start it), ``instances`` (lab
instances, kernel side).
"""
