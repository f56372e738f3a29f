"""HTTP route handlers grouped by audience; each handler decodes, checks, calls the core and
answers. Errors are raised as ApiError and rendered once, by the dispatcher in gateway.app."""
