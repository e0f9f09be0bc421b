"""The Routing V1 HTTP API (delegated routing): pure records and the server on the registry port."""
