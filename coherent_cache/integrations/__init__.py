"""Optional integrations with web frameworks; import each from its own module."""

__all__: tuple[str, ...] = ()
