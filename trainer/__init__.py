"""The trainer: one LoRA adapter per target distribution (the paper's method and its baselines).

Modules: `datasets` (training rows and their packed batches), `losses` (the one completion
log-probability function, KTO, steering KL, DPO), `sft` (stage 1 and IFT), `hybrid` (stage 2),
`baselines` (DPO), `hparams`, `export` (the adapter folder) and `train` (`distctl train`).
"""
