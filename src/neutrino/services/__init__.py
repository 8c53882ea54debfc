"""Business rules, one module per resource: ``create/update/delete_(core, conn, ctx, …)``, ``fetch``,
``scope`` (what a caller may see, as a SQL condition) and ``view`` (rows -> API dicts).

Each call runs inside the one transaction the API layer opened, takes already-validated input, raises
``neutrino.errors`` API errors, bumps revisions and appends to the change feed. No HTTP, no kernel.
"""
