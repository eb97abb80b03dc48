"""The data aivd exchanges, as pydantic models: the cloud's analysis of a region (`analysis`), the inspection
record of an image (`records`, one line of results.jsonl and a database row) and the cloud service's HTTP API
(`wire`). Every package may import this one; it imports only `aivd.core`."""
