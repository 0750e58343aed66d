"""Fine-tuning (``gerbil finetune``): classification and prompt → completion data for a pretrained tiny model.

``data`` reads a user's labelled file (JSONL / CSV / parquet) into :class:`~gerbil.finetune.data.Examples`,
counting and skipping bad rows the way ``prepare`` does, and splits it deterministically into train and
validation. ``datasets`` provides real, pinned, offline labelled sets to try it on (SpamAssassin mail,
BoolQ) and a generator of "fuzzy wrapper" pairs (free-form dates → ISO dates via ``dateutil``).
The sets, their sources, licences, hashes and counts are described in ``docs/finetune-data.md``.
"""
