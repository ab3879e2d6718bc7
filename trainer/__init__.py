"""densepref trainer: guided pair generation and DenseDPO / vanilla DPO for diffusers video models.

Imports only ``labeler.schemas`` from the labeler (docs/design.md §3). Modules:

- ``pairs``: ``python -m trainer.pairs`` — aligned A/B videos from real videos (shared-eta guided
  generation) and the pair manifest ``labeler.batch`` reads;
- ``train``: ``python -m trainer.train`` — the training loop (``config`` holds its options);
- ``losses``: dense / vanilla DPO losses and TRL-style metrics, small pure functions;
- ``latents``: segment labels -> latent-frame labels for a causal video VAE (docs/design.md §2.6);
- ``data``: label files, the > 20 % non-tie filter, the on-disk latent / text-embedding cache;
- ``step``: one step's flow-matching errors (policy and LoRA-off reference) and loss;
- ``models``: the model-family adapter (Wan; ``tiny`` builds a random-weight Wan in code);
- ``checkpoint``, ``media``, ``steptime`` (dense vs vanilla step time and memory).

See docs/training.md.
"""
