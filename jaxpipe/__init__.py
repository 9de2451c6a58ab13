"""jaxpipe."""
