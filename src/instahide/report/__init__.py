"""Reports: pictures of what the scheme does, challenge score reports, and the audit report."""
from .audit_report import write_audit_report
from .figures import encryption_grid, to_display, truth_unit_range, write_score_report

__all__ = ["encryption_grid", "to_display", "truth_unit_range", "write_score_report", "write_audit_report"]
