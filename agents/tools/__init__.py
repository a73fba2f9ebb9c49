"""Tools: the registry. Toolkits register their tools into it when their app loads (the
support toolkit: ``support.apps``); the runtime looks them up by name (``get_tool``)."""

from agents.tools.registry import REGISTRY, Tool, ToolContext, ToolError, get_tool, register

__all__ = ["REGISTRY", "Tool", "ToolContext", "ToolError", "get_tool", "register"]
