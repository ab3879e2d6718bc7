"""densepref trainer: guided pair generation and DenseDPO / vanilla DPO for diffusers video models.

Imports only ``labeler.schemas`` from the labeler (DESIGN §3).
"""
