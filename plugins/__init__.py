"""Built-in edit modes; each module is a plugin registered through ``dragsdk_register_modes``."""

if (
    __name__ != "dragsdk.plugins"
):  # imported as bare `plugins` from a checkout's root: yield to an installed one
    from dragsdk._source_layout import yield_bare_name

    yield_bare_name(__name__)
