"""Tools: the registry and the toolkits. Importing this package registers the support toolkit."""

from agents.tools import support  # noqa: F401  (registers the support toolkit)
from agents.tools.registry import REGISTRY, Tool, ToolContext, ToolError, get_tool, register

__all__ = ["REGISTRY", "Tool", "ToolContext", "ToolError", "get_tool", "register"]
