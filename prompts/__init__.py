"""Judge prompt templates (``*.j2``); ``labeler.judges.prompts`` loads them. prompt_id = name@content-hash."""
