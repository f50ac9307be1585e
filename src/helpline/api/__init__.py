"""HTTP layer: thin routes, dependencies, middleware and the one error shape."""
