"""Pure protocol layer: no asyncio, no I/O. Bytes and dicts in, events and decisions out."""
