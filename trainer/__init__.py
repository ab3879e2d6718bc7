"""densepref trainer: guided pair generation and DenseDPO / vanilla DPO for diffusers video models.

Imports of the labeler only ``labeler.schemas`` (record formats) and ``labeler.fileio`` (atomic
writes, newline-only JSONL). Modules:

- ``pairs``: ``python -m trainer.pairs`` — aligned A/B videos from real videos (shared-eta guided
  generation) and the pair manifest ``labeler.batch`` reads;
- ``train``: ``python -m trainer.train`` — the training loop (``config`` holds its options);
- ``losses``: dense / vanilla DPO losses and TRL-style metrics, small pure functions;
- ``latents``: segment labels -> latent-frame labels for a causal video VAE;
- ``data``: label files cut to the training window, the > 20 % non-tie filter, the on-disk latent /
  text-embedding cache;
- ``step``: one step's timestep sampling, flow-matching errors (policy and LoRA-off reference) and loss;
- ``models``: the model-family adapter (Wan2.1; ``tiny`` builds a random-weight Wan in code);
- ``checkpoint``, ``media``, ``steptime`` (dense vs vanilla step time and memory).

See docs/training.md.
"""
