"""The API's routes, one module per resource; `streamrag_api.main` includes each module's `router`."""
