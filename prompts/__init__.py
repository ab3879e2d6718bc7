"""Judge prompt templates (``*.j2``); ``labeler.prompts`` loads them. prompt_id = name@content-hash."""
