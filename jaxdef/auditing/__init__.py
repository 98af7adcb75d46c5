"""Audit any stochastic defense with the study's protocol (``jaxdef.audit``).

  report = jaxdef.audit(key, clf, images, labels, eps=8/255, budget="quick")
  print(report.to_markdown())

See `audit` for the steps and `BUDGETS` for what each budget spends.
"""

from jaxdef.auditing._budgets import BUDGETS
from jaxdef.auditing._budgets import Budget
from jaxdef.auditing._protocol import audit
from jaxdef.auditing._protocol import plan
from jaxdef.auditing._report import AuditReport

__all__ = ("BUDGETS", "AuditReport", "Budget", "audit", "plan")
