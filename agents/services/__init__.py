"""State changes of the runtime, one module per entity: ``runs`` (start, cancel, resume,
sweep), ``switches`` (kill switches), ``spend`` (tenant daily spend), ``policies``.
Import from the module that owns the name (``from agents.services.runs import run_start``).
"""
