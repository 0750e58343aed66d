"""Fine-tuning (``gerbil finetune`` / ``gerbil predict``): classification and prompt → completion on a
pretrained tiny model, through the training loop of ``gerbil train`` (docs/finetune.md).

``data`` reads a user's labelled file (JSONL / CSV / parquet) into :class:`~gerbil.finetune.data.Examples`,
counting and skipping bad rows, and splits it deterministically into train and validation; ``datasets``
provides real, pinned, offline labelled sets (SpamAssassin mail, BoolQ) and "fuzzy wrapper" date pairs
(docs/finetune-data.md). ``config`` is `FinetuneConfig`; ``batches`` turns examples into tokens, epoch
steps and micro-batches; ``workloads`` are what the loop runs (the classifier itself is
`gerbil.model.classifier.Classifier`); ``finetune`` resolves and runs a fine-tuning run; ``decode`` is
batched greedy decoding; ``predict`` is batch inference; ``command`` holds the CLI verbs.
"""
