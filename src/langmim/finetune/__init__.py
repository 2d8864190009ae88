"""``langmim finetune``: end-to-end fine-tuning (MAE's ``main_finetune.py``) of a pre-trained
run's vision tower on the shared engine: the classifier and its layer-decay groups (``model``), the
lr schedule (``schedule``), the data and its seeded augmentation (``data``), the run (``train``)."""
