"""Built-in edit modes; each module is a plugin registered through ``dragsdk_register_modes``."""
