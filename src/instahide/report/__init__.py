"""Reports: pictures of what the scheme does (and, with the audit tools, of what attacks recover)."""
from .figures import encryption_grid, to_display

__all__ = ["encryption_grid", "to_display"]
