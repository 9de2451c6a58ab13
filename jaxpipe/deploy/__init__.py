"""`jaxpipe deploy <cloud>`: set up the functions, image and bucket a platform needs."""

__all__: list[str] = []
