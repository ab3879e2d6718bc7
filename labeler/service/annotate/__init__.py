"""The human annotation page: routes (``routes``), the append-only answer store (``store``) and the
static page (``static/``)."""
