"""The HTTP service: the labeling engine behind ``POST /label`` and ``/label/batch``, health and
metrics endpoints, and the human annotation page (``annotate/``). Entry points: ``python -m
labeler.app`` and ``uvicorn --factory labeler.app:create_app`` (see ``labeler.app``)."""
