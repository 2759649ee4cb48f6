"""The fake GitHub: a real aiohttp server on loopback (issue 4 fills it in)."""
