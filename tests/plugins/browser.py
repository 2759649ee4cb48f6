"""Playwright driving Debian's Chromium (issue 5 fills it in)."""
