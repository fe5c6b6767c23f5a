"""Interchangeable executors of the guided sampler; each registers through ``dragsdk_register_backends``."""

if (
    __name__ != "dragsdk.backends"
):  # imported as bare `backends` from a checkout's root: yield to an installed one
    from dragsdk._source_layout import yield_bare_name

    yield_bare_name(__name__)
