"""Figures (matplotlib, PNG and PDF) and tables (markdown, CSV) of results."""
