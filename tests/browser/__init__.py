"""Browser helpers for the frontend tests (Playwright with Debian's Chromium; see comfy_page.py)."""
