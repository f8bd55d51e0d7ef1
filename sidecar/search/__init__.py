"""Pure functions about the engines' search protocol: no I/O, no aiohttp, no torch."""
